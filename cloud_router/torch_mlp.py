"""Runtime "torch_mlp": a ReLU multilayer perceptron in torch, weights in a safetensors file.

    model.json options: {"in_features": 64, "hidden": [512, 256], "threads": 1}
    weights file:       layers.{i}.weight [out, in], layers.{i}.bias [out], float32

The output layer has one unit per label; `predict` returns softmax probabilities.

Threads: torch's intra-op pool is per process, so `load()` sets it for the whole process
(`threads`, default 1). One thread is the right default on small nodes (2 cores): a batch of
an MLP this size is a few hundred microseconds of GEMM, too small for a second thread to pay
for its hand-off, and the router's gRPC threads and batcher need the other core. Scale
throughput with replicas; raise `threads` only for wide layers and large batches on a node
with cores to spare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from shared.errors import ConfigError, ModelError
from shared.model import Model, ModelInput
from shared.model_card import InputSpec, ModelCard, save_card

WEIGHTS_FILE = "weights.safetensors"


class TorchMLPOptions(BaseModel):
    """`options` of a runtime "torch_mlp" card."""

    model_config = ConfigDict(extra="forbid")

    in_features: int = Field(ge=1)
    hidden: list[int] = Field(default_factory=list)
    """Hidden layer widths, input side first; empty means a linear classifier."""
    threads: int = Field(default=1, ge=1, le=256)
    """torch intra-op threads for the whole process (see the module docstring)."""


class MLP(nn.Module):
    """Linear layers with ReLU (and dropout while training) between them; returns logits."""

    def __init__(self, in_features: int, hidden: Sequence[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        sizes = [in_features, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:]))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers[:-1]:
            x = nn.functional.dropout(torch.relu(layer(x)), self.dropout, self.training)
        return self.layers[-1](x)


class TorchMLPModel(Model):
    """Runs an `MLP` under `torch.inference_mode()` on CPU."""

    def __init__(self, card: ModelCard, bundle_dir: Path) -> None:
        super().__init__(card, bundle_dir)
        self.options = parse_options(card)
        self.net: MLP | None = None

    def load(self) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.bundle_dir / self.card.file
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read weights {path}: {exc}") from None
        net = MLP(self.options.in_features, self.options.hidden, len(self.labels))
        _load_weights(net, tensors, path)
        net.eval()
        torch.set_num_threads(self.options.threads)
        self.net = net
        self.ready = True

    def unload(self) -> None:
        self.net = None
        super().unload()

    def predict(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        if self.net is None:
            raise ModelError(f"model {self.name!r} is not loaded")
        batch = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in inputs]))
        with torch.inference_mode():
            probs = torch.softmax(self.net(batch), dim=1)
        return probs.numpy().astype(np.float32, copy=False)


def parse_options(card: ModelCard) -> TorchMLPOptions:
    """The card's options, checked against its input spec, or a ConfigError naming the field."""
    try:
        options = TorchMLPOptions.model_validate(card.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"model {card.name!r} (runtime torch_mlp): option {where!r}: {err['msg']}") from None
    if any(width < 1 for width in options.hidden):
        raise ConfigError(f"model {card.name!r} (runtime torch_mlp): option 'hidden' widths must be >= 1, got {options.hidden}")
    spec = card.input
    if spec.kind != "tensor" or spec.dtype != "float32" or spec.shape != [options.in_features]:
        raise ConfigError(
            f"model {card.name!r} (runtime torch_mlp) takes float32 tensors of shape [{options.in_features}]; "
            f"its card declares {spec.kind} {spec.dtype} {spec.shape}"
        )
    return options


def _load_weights(net: MLP, tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    expected = net.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ConfigError(f"weights {path} do not match the card's layer sizes: missing {missing}, unexpected {unexpected}")
    for key, want in expected.items():
        if tuple(tensors[key].shape) != tuple(want.shape):
            raise ConfigError(
                f"weights {path}: tensor {key!r} has shape {list(tensors[key].shape)}, the card's layer sizes need {list(want.shape)}"
            )
    net.load_state_dict({key: value.to(torch.float32) for key, value in tensors.items()})


def save_mlp_bundle(
    bundle_dir: str | Path,
    net: MLP,
    *,
    name: str,
    version: int,
    labels: Sequence[str],
    threads: int = 1,
) -> Path:
    """Write `net` as a runtime "torch_mlp" bundle (model.json + weights.safetensors)."""
    from safetensors.torch import save_file

    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    in_features = net.layers[0].in_features
    hidden = [layer.out_features for layer in net.layers[:-1]]
    if net.layers[-1].out_features != len(labels):
        raise ConfigError(f"net has {net.layers[-1].out_features} outputs but {len(labels)} labels were given")
    state = {key: value.detach().to(torch.float32).contiguous() for key, value in net.state_dict().items()}
    save_file(state, str(bundle_dir / WEIGHTS_FILE), metadata={"format": "edgecascade.torch_mlp"})
    card = ModelCard(
        name=name,
        version=version,
        labels=list(labels),
        input=InputSpec(kind="tensor", dtype="float32", shape=[in_features]),
        runtime="torch_mlp",
        file=WEIGHTS_FILE,
        options=TorchMLPOptions(in_features=in_features, hidden=hidden, threads=threads).model_dump(),
    )
    save_card(bundle_dir, card)
    return bundle_dir
