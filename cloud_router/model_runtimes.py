"""The cloud side of `shared.model.load_model`: builds the model a card's `runtime` names.

Each runtime lives in its own module and is imported only when a card asks for it, so a
router hosting only a "sleep" model never imports torch.

    onnx         shared.onnx_model.OnnxModel        (CPU provider; load_model picks providers)
    torch_mlp    cloud_router.torch_mlp.TorchMLPModel
    sleep        cloud_router.sleep_model.SleepModel
    minilm_head  cloud_router.minilm_model.MiniLMHeadModel
"""

from __future__ import annotations

from pathlib import Path

from shared.errors import ConfigError
from shared.model import Model
from shared.model_card import ModelCard


def build_cloud_model(card: ModelCard, bundle_dir: str | Path) -> Model:
    """The (not yet loaded) model for `card`; a ConfigError names an unknown runtime."""
    bundle_dir = Path(bundle_dir)
    if card.runtime == "torch_mlp":
        from cloud_router.torch_mlp import TorchMLPModel

        return TorchMLPModel(card, bundle_dir)
    if card.runtime == "sleep":
        from cloud_router.sleep_model import SleepModel

        return SleepModel(card, bundle_dir)
    if card.runtime == "minilm_head":
        from cloud_router.minilm_model import MiniLMHeadModel

        return MiniLMHeadModel(card, bundle_dir)
    if card.runtime == "onnx":
        from shared.onnx_model import OnnxModel

        return OnnxModel(card, bundle_dir)
    raise ConfigError(f"model {card.name!r}: unknown runtime {card.runtime!r}")
