"""`load_model`: the model a bundle directory describes, built by the runtime its card names.

"onnx" is built in; the cloud router registers the others (`register_runtime`, filled by
`cloud_router.model_runtimes` when the `cloud_router` package is imported), so shared code
needs neither daemon and the edge agent never sees a torch runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from shared.errors import ConfigError
from shared.model import Model
from shared.model_card import ModelCard, load_card
from shared.onnx_model import OnnxModel

#: Builds a (not yet loaded) model from its card and bundle directory.
ModelBuilder = Callable[[ModelCard, Path], Model]

#: Runtimes beyond "onnx", by the name a card's `runtime` gives.
_RUNTIMES: dict[str, ModelBuilder] = {}


def register_runtime(name: str, builder: ModelBuilder) -> None:
    """Make `load_model` build cards whose `runtime` is `name` with `builder`."""
    if name == "onnx":
        raise ConfigError("runtime 'onnx' is built in and cannot be replaced")
    _RUNTIMES[name] = builder


def registered_runtimes() -> list[str]:
    """Every runtime `load_model` can build now, "onnx" first."""
    return ["onnx", *sorted(_RUNTIMES)]


def load_model(bundle_dir: str | Path, *, providers: Sequence[str] = ("CPUExecutionProvider",), edge: bool = False) -> Model:
    """Build the model a bundle describes (not yet loaded). `edge=True` refuses every runtime
    but "onnx"; the others must have been registered (`register_runtime`)."""
    bundle_dir = Path(bundle_dir)
    card = load_card(bundle_dir)
    if card.runtime == "onnx":
        return OnnxModel(card, bundle_dir, providers=providers)
    if edge:
        raise ConfigError(f"model {card.name!r} uses runtime {card.runtime!r}; edge agents run only 'onnx' models")
    builder = _RUNTIMES.get(card.runtime)
    if builder is None:
        hint = "" if _RUNTIMES else " (the cloud runtimes register when the cloud_router package is imported)"
        raise ConfigError(f"model {card.name!r}: unknown runtime {card.runtime!r}; known: {registered_runtimes()}{hint}")
    return builder(card, bundle_dir)
