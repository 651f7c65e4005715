"""How an edgecascade model looks over KServe v2, for both daemons' backends.

Every model has one input, `input`: its card's tensor (datatype from the card dtype, shape
[-1, *card shape]) or text (BYTES, shape [-1]). The first dimension is the batch: a request
of N rows is N edgecascade requests. Every model answers `probs` (FP32 [-1, C]), `label`
(INT64 [-1], the class index) and `label_name` (BYTES [-1]), the same values the
edgecascade SDK returns as `probabilities`, `label` and `label_name`.

The reserved `timeout` parameter (and the gRPC deadline) become the edgecascade deadline;
the reserved `priority` becomes the batch priority (see `batch_priority`).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

import numpy as np

from shared.errors import InvalidInputError, ModelError, ModelNotFoundError, echoed
from shared.kserve_backend import InferenceRequest, ModelMetadata, ParameterValue, TensorSpec
from shared.kserve_codec import datatype_for_dtype
from shared.model import Model, ModelInput
from shared.model_card import ModelCard
from shared.prediction import Prediction

T = TypeVar("T")

INPUT_NAME = "input"
PROBS, LABEL, LABEL_NAME = "probs", "label", "label_name"
#: KServe priority level that equals the edgecascade default (0). Levels 1..4 are served
#: before default traffic, higher levels after it; 0 in a request means "default".
DEFAULT_PRIORITY_LEVEL = 5
_INT32_MAX = 2**31 - 1
#: Most rows one request may carry; each row is a request of its own inside the daemon.
MAX_ROWS = 4096
#: Rows of one request in flight at once (`run_rows`): a 4,096-row request waits its turn
#: instead of queueing all its rows ahead of other callers' requests.
MAX_ROWS_IN_FLIGHT = 128
#: Platform strings by card runtime; ONNX uses Triton's name so tools recognise it.
_PLATFORMS = {"onnx": "onnxruntime_onnx", "torch_mlp": "pytorch", "minilm_head": "pytorch", "sleep": "edgecascade_sleep"}


def server_version() -> str:
    """The installed edgecascade version, for ServerMetadata."""
    try:
        return importlib.metadata.version("edgecascade")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def input_spec(card: ModelCard) -> TensorSpec:
    if card.input.kind == "text":
        return TensorSpec(INPUT_NAME, "BYTES", (-1,))
    return TensorSpec(INPUT_NAME, datatype_for_dtype(card.input.dtype), (-1, *card.input.shape))


def prediction_specs(card: ModelCard) -> tuple[TensorSpec, ...]:
    return (
        TensorSpec(PROBS, "FP32", (-1, len(card.labels))),
        TensorSpec(LABEL, "INT64", (-1,)),
        TensorSpec(LABEL_NAME, "BYTES", (-1,)),
    )


def model_metadata(model: Model, extra_outputs: Sequence[TensorSpec] = ()) -> ModelMetadata:
    card = model.card
    return ModelMetadata(
        name=card.name,
        versions=(str(card.version),),
        platform=_PLATFORMS.get(card.runtime, f"edgecascade_{card.runtime}"),
        inputs=(input_spec(card),),
        outputs=prediction_specs(card) + tuple(extra_outputs),
    )


def check_version(model: Model, version: str) -> None:
    """ModelNotFoundError unless `version` is "" (the server's choice) or the model's version."""
    if version and version != str(model.version):
        raise ModelNotFoundError(f"model {model.name!r} is served at version {model.version}, not version {echoed(version)}")


def request_rows(request: InferenceRequest, model: Model) -> list[ModelInput]:
    """The request's batch as one edgecascade input per row, each checked against the model."""
    spec = input_spec(model.card)
    names = list(request.inputs)
    if names != [INPUT_NAME]:
        raise InvalidInputError(
            f"model {model.name!r} takes one input named {INPUT_NAME!r} ({spec.datatype} {list(spec.shape)}), got {echoed(names)}"
        )
    array = request.inputs[INPUT_NAME]
    wanted = f"input {INPUT_NAME!r} of model {model.name!r} is {spec.datatype} with shape {list(spec.shape)}"
    datatype = datatype_for_dtype(array.dtype)
    if datatype != spec.datatype:
        raise InvalidInputError(f"{wanted}; got {datatype}")
    if array.ndim != len(spec.shape):
        raise InvalidInputError(f"{wanted}; got shape {list(array.shape)}")
    if array.shape[0] == 0:
        raise InvalidInputError(f"input {INPUT_NAME!r} has no rows (shape {list(array.shape)})")
    if array.shape[0] > MAX_ROWS:
        raise InvalidInputError(f"input {INPUT_NAME!r} has {array.shape[0]} rows; send at most {MAX_ROWS} per request")
    if datatype == "BYTES":
        rows: list[ModelInput] = [str(text) for text in array]
    else:
        rows = [array[index] for index in range(array.shape[0])]
    for index, row in enumerate(rows):
        try:
            model.check_input(row)
        except InvalidInputError as exc:
            raise InvalidInputError(f"row {index} of input {INPUT_NAME!r}: {exc}") from None
    return rows


def absolute_deadline_s(request: InferenceRequest, *, default_timeout_ms: float, max_timeout_ms: float) -> float:
    """The request's deadline on the monotonic clock (`shared.deadlines`)."""
    time_left_s = request.time_left_s()
    if time_left_s is None:
        return time.monotonic() + default_timeout_ms / 1000.0
    if time_left_s * 1000.0 > max_timeout_ms:
        raise InvalidInputError(
            f"the request's timeout ({time_left_s:.0f} s) is beyond the limit of {max_timeout_ms / 1000.0:g} s"
        )
    return time.monotonic() + time_left_s


def batch_priority(kserve_priority: int) -> int:
    """KServe priority level (0 default, 1 highest) -> edgecascade priority (higher first, 0 default)."""
    if kserve_priority == 0:
        return 0
    return max(-_INT32_MAX, DEFAULT_PRIORITY_LEVEL - kserve_priority)


def row_request_ids(request: InferenceRequest, rows: int) -> list[str]:
    """One edgecascade request id per row: the KServe id (or a fresh one), suffixed by row."""
    base = request.request_id[:100] or uuid.uuid4().hex
    return [base] if rows == 1 else [f"{base}/{index}" for index in range(rows)]


def prediction_outputs(predictions: Sequence[Prediction]) -> dict[str, np.ndarray]:
    """`probs`, `label` and `label_name` for the rows' predictions."""
    widths = {len(p.probabilities) for p in predictions}
    if len(widths) != 1:
        raise ModelError(f"rows were answered by models with different numbers of classes {sorted(widths)}")
    return {
        PROBS: np.stack([np.asarray(p.probabilities, dtype=np.float32) for p in predictions]),
        LABEL: np.array([p.label for p in predictions], dtype=np.int64),
        LABEL_NAME: np.array([p.label_name for p in predictions], dtype=object),
    }


def joined(values: Sequence[str]) -> str:
    """Per-row strings as one response parameter: the value for one row, comma-separated for more."""
    return ",".join(values)


def first_error(outcomes: Sequence[object]) -> BaseException | None:
    """The first exception among `asyncio.gather(..., return_exceptions=True)` results."""
    return next((o for o in outcomes if isinstance(o, BaseException)), None)


@dataclass(frozen=True)
class RowBatch:
    """A KServe request split into edgecascade requests: one per row, sharing a deadline."""

    rows: list[ModelInput]
    deadline_s: float
    priority: int
    request_ids: list[str]


def row_batch(request: InferenceRequest, model: Model, *, default_timeout_ms: float, max_timeout_ms: float) -> RowBatch:
    rows = request_rows(request, model)
    return RowBatch(
        rows=rows,
        deadline_s=absolute_deadline_s(request, default_timeout_ms=default_timeout_ms, max_timeout_ms=max_timeout_ms),
        priority=batch_priority(request.priority),
        request_ids=row_request_ids(request, len(rows)),
    )


async def run_rows(batch: RowBatch, run_row: Callable[[ModelInput, float, str, int], Awaitable[T]], *,
                   max_in_flight: int = MAX_ROWS_IN_FLIGHT) -> list[T]:
    """Run the rows in order, at most `max_in_flight` at a time, so that one big request never
    puts all its rows ahead of other callers' requests in a queue; each lane lets the event
    loop serve others between its rows. The first row's error (in row order) fails the whole
    request, and no row starts once one has failed."""
    count = len(batch.rows)
    if count == 1:
        return [await run_row(batch.rows[0], batch.deadline_s, batch.request_ids[0], batch.priority)]
    outcomes: list = [None] * count
    queue = iter(range(count))
    failed = False

    async def lane() -> None:
        nonlocal failed
        for index in queue:
            if failed:
                return
            try:
                outcomes[index] = await run_row(batch.rows[index], batch.deadline_s, batch.request_ids[index], batch.priority)
            except Exception as exc:  # handed to the caller below
                outcomes[index] = exc
                failed = True
            await asyncio.sleep(0)

    await asyncio.gather(*(lane() for _ in range(min(max_in_flight, count))))
    error = first_error(outcomes)
    if error is not None:
        raise error
    return outcomes


ParameterMap = dict[str, ParameterValue]
