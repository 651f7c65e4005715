"""The cloud runtimes of `shared.model_loader.load_model`, registered when `cloud_router` is imported.

Each runtime lives in its own module and is imported only when a card asks for it, so a
router hosting only a "sleep" model never imports torch. "onnx" is built into `load_model`.

    torch_mlp    cloud_router.torch_mlp.TorchMLPModel
    sleep        cloud_router.sleep_model.SleepModel
    minilm_head  cloud_router.minilm_model.MiniLMHeadModel
"""

from __future__ import annotations

from pathlib import Path

from shared.model import Model
from shared.model_card import ModelCard
from shared.model_loader import load_model, register_runtime


def _torch_mlp(card: ModelCard, bundle_dir: Path) -> Model:
    from cloud_router.torch_mlp import TorchMLPModel

    return TorchMLPModel(card, bundle_dir)


def _sleep(card: ModelCard, bundle_dir: Path) -> Model:
    from cloud_router.sleep_model import SleepModel

    return SleepModel(card, bundle_dir)


def _minilm_head(card: ModelCard, bundle_dir: Path) -> Model:
    from cloud_router.minilm_model import MiniLMHeadModel

    return MiniLMHeadModel(card, bundle_dir)


CLOUD_RUNTIMES = {"torch_mlp": _torch_mlp, "sleep": _sleep, "minilm_head": _minilm_head}

for _name, _builder in CLOUD_RUNTIMES.items():
    register_runtime(_name, _builder)


def load_cloud_model(bundle_dir: str | Path) -> Model:
    """The (not yet loaded) model a cloud bundle describes, any runtime; a ConfigError names
    an unknown one."""
    return load_model(bundle_dir)
