"""ONNX Runtime models, with execution-provider choice (TensorRT, CUDA, CPU) and CPU fallback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from shared.errors import ConfigError
from shared.model import Model, ModelInput
from shared.model_card import ModelCard

log = logging.getLogger(__name__)

#: Short names accepted in config, mapped to ONNX Runtime provider names.
PROVIDER_ALIASES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """The requested providers that this onnxruntime build has, in order, always ending in CPU.

    A missing provider is logged as a warning, not an error: a board without its GPU still serves.
    """
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    chosen: list[str] = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in PROVIDER_ALIASES.values():
            raise ConfigError(f"unknown execution provider {name!r}; use one of {sorted(PROVIDER_ALIASES)}")
        if full in available:
            chosen.append(full)
        else:
            log.warning("execution provider %s is not available in this onnxruntime build; falling back", full)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


#: Inputs of a graph that takes featurizer output in COO form (edgecascade.offline.text_edge_build).
SPARSE_INPUTS = ("indices", "values", "segment", "row_ids")


class OnnxModel(Model):
    """An ONNX graph with one input and output `probs`. Text goes through the card's featurizer
    (options["featurizer"]), or without one straight into the graph as STRING [N]. A featurized
    graph takes either the dense vector [N, F] or, when its inputs are SPARSE_INPUTS, only the
    non-empty buckets (COO: bucket, value, row of each entry, and the row numbers)."""

    def __init__(self, card: ModelCard, bundle_dir: Path, providers: Sequence[str] = ("cpu",)) -> None:
        super().__init__(card, bundle_dir)
        self.requested_providers = list(providers)
        self.session = None
        self._featurize = None
        self._sparse = False

    def load(self) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.card.options.get("intra_op_threads", 1))
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(self.bundle_dir / self.card.file), sess_options=options, providers=resolve_providers(self.requested_providers)
            )
        except ConfigError:
            raise
        except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
            raise ConfigError(f"cannot load ONNX model {self.bundle_dir / self.card.file}: {exc}") from None
        input_names = tuple(i.name for i in self.session.get_inputs())
        self._input_name = input_names[0]
        self._sparse = sorted(input_names) == sorted(SPARSE_INPUTS)
        if self._sparse and not (self.card.input.kind == "text" and "featurizer" in self.card.options):
            raise ConfigError(f"ONNX model {self.bundle_dir / self.card.file} takes sparse features "
                              f"{list(SPARSE_INPUTS)}; its card must declare text input with a featurizer")
        if self.card.input.kind == "text" and "featurizer" in self.card.options:
            from shared.text_features import featurizer_from_options

            self._featurize = featurizer_from_options(self.card.options.get("featurizer", {}))
        self.ready = True

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers() if self.session else []

    def predict(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        if self._sparse:
            rows, buckets, values = self._featurize.sparse(list(inputs))
            feeds = {"indices": buckets, "values": values, "segment": rows,
                     "row_ids": np.arange(len(inputs), dtype=np.int64)}
            (probs,) = self.session.run(None, feeds)
            return np.asarray(probs, dtype=np.float32)
        if self._featurize is not None:
            batch = self._featurize(list(inputs))
        elif self.card.input.kind == "text":  # no featurizer: the graph takes a STRING tensor [N]
            batch = np.array(list(inputs), dtype=object)
        else:
            batch = np.stack([np.asarray(x) for x in inputs])
        (probs,) = self.session.run(None, {self._input_name: batch})
        return np.asarray(probs, dtype=np.float32)
