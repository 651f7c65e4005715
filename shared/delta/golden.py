"""Golden inputs with expected outputs: the check a new model must pass before it serves.

Arrays travel in the manifest as base64 raw little-endian bytes with dtype and shape.
"""

from __future__ import annotations

import base64
import binascii
import math
from typing import Callable, Optional, Sequence, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import GoldenMismatchError, InvalidInputError
from shared.tensor_codec import ALLOWED_DTYPES

GoldenInput = Union[np.ndarray, str]


class EncodedArray(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dtype: str
    shape: list[int]
    data_b64: str

    @model_validator(mode="after")
    def _consistent(self) -> "EncodedArray":
        if self.dtype not in ALLOWED_DTYPES:
            raise ValueError(f"dtype {self.dtype!r} is not one of {sorted(ALLOWED_DTYPES)}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"shape {self.shape} has a negative dimension")
        try:
            n = len(base64.b64decode(self.data_b64, validate=True))
        except binascii.Error as exc:
            raise ValueError(f"data_b64 is not base64: {exc}") from None
        want = math.prod(self.shape) * np.dtype(self.dtype).itemsize
        if n != want:
            raise ValueError(f"data is {n} bytes; shape {self.shape} of {self.dtype} needs {want}")
        return self

    @classmethod
    def encode(cls, array: np.ndarray) -> "EncodedArray":
        array = np.ascontiguousarray(array)
        if array.dtype.name not in ALLOWED_DTYPES:
            raise InvalidInputError(f"golden array dtype {array.dtype.name!r} is not supported")
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        return cls(dtype=array.dtype.name, shape=list(array.shape), data_b64=base64.b64encode(little.tobytes()).decode())

    def decode(self) -> np.ndarray:
        dtype = np.dtype(self.dtype).newbyteorder("<")
        return np.frombuffer(base64.b64decode(self.data_b64), dtype=dtype).reshape(self.shape).astype(self.dtype)


class GoldenCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: Optional[EncodedArray] = None
    """A tensor input (without batch dimension), or None when `text` is set."""
    text: Optional[str] = None
    expected: EncodedArray
    """Expected model output for this one input (e.g. the probability row)."""

    @model_validator(mode="after")
    def _one_input(self) -> "GoldenCase":
        if (self.input is None) == (self.text is None):
            raise ValueError("a golden case holds exactly one of `input` and `text`")
        return self

    def model_input(self) -> GoldenInput:
        return self.text if self.text is not None else self.input.decode()


class Golden(BaseModel):
    model_config = ConfigDict(extra="forbid")

    atol: float = Field(ge=0)
    """Largest allowed absolute difference per output element."""
    rtol: float = Field(default=0.0, ge=0)
    cases: list[GoldenCase] = Field(min_length=1)


def make_golden(inputs: Sequence[GoldenInput], expected: Sequence[np.ndarray], *, atol: float, rtol: float = 0.0) -> Golden:
    """Golden cases from inputs (arrays or strings) and the outputs the new model gave on them."""
    if len(inputs) != len(expected):
        raise InvalidInputError(f"{len(inputs)} golden inputs but {len(expected)} expected outputs")
    cases = [
        GoldenCase(text=x, expected=EncodedArray.encode(y)) if isinstance(x, str)
        else GoldenCase(input=EncodedArray.encode(np.asarray(x)), expected=EncodedArray.encode(y))
        for x, y in zip(inputs, expected)
    ]
    return Golden(atol=atol, rtol=rtol, cases=cases)


def check_golden(golden: Golden, predict: Callable[[list[GoldenInput]], np.ndarray]) -> None:
    """Run `predict` on the golden inputs (one batch); GoldenMismatchError naming the worst case."""
    outputs = np.asarray(predict([case.model_input() for case in golden.cases]))
    if outputs.shape[0] != len(golden.cases):
        raise GoldenMismatchError(f"model gave {outputs.shape[0]} outputs for {len(golden.cases)} golden inputs")
    for i, case in enumerate(golden.cases):
        want = case.expected.decode()
        got = outputs[i]
        if got.shape != want.shape:
            raise GoldenMismatchError(f"golden case {i}: output shape {list(got.shape)}, expected {list(want.shape)}")
        if not np.allclose(got, want, atol=golden.atol, rtol=golden.rtol, equal_nan=False):
            worst = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64))))
            raise GoldenMismatchError(
                f"golden case {i}: output differs by up to {worst:.3g} (atol {golden.atol}, rtol {golden.rtol})"
            )
