"""Encode one tensor's new bytes against its old bytes, and decode them back.

Methods (the name is stored in the patch header):
- `xor_zstd`: XOR with the base, split into byte planes (all first bytes of each element,
  then all second bytes...), zstd. Small float updates leave sign/exponent bytes equal, so
  those planes are near-zero and compress well. Used for same-size float tensors of any
  size, and for same-size wide integer tensors too large for bsdiff4.
- `sub_zstd`: byte-wise difference (target - base mod 256), zstd. For large same-size int8
  tensors: a retrained quantized weight moves by a few steps, which this captures as bsdiff4
  would on aligned data, without bsdiff4's suffix sort (its time and ~17x memory).
- `bsdiff4`: same-size non-float tensors up to `BSDIFF_MAX_BYTES` (int8 weights, int32/int64
  tables), and tensors whose size changed.
- `zstd`: the new bytes alone, when there is no base or the delta is no smaller.
"""

from __future__ import annotations

from typing import Optional

import bsdiff4
import numpy as np
import zstandard

from shared.delta.layout import Kind
from shared.errors import CorruptPatchError

ZSTD_LEVEL = 3
#: Same-size tensors above this skip bsdiff4 (its memory is ~17x the input).
BSDIFF_MAX_BYTES = 1 << 20
#: If a delta is above this fraction of the tensor, also try plain zstd and keep the smaller.
TRY_RAW_ABOVE = 0.5

METHODS = ("xor_zstd", "sub_zstd", "bsdiff4", "zstd")


def zstd_compress(data, level: int = ZSTD_LEVEL) -> bytes:
    return zstandard.ZstdCompressor(level=level).compress(data)


def zstd_decompress(blob, size: int) -> bytes:
    """Decompress a frame that must hold exactly `size` bytes."""
    try:
        out = zstandard.ZstdDecompressor().decompress(blob, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise CorruptPatchError(f"zstd frame does not decode: {exc}") from None
    if len(out) != size:
        raise CorruptPatchError(f"zstd frame holds {len(out)} bytes, expected {size}")
    return out


def choose_method(kind: Kind, base_length: Optional[int], length: int) -> str:
    """The first method to try for a changed tensor."""
    if base_length is None:
        return "zstd"
    if base_length != length:
        return "bsdiff4"
    if kind == "float":
        return "xor_zstd"
    if length <= BSDIFF_MAX_BYTES:
        return "bsdiff4"
    return "sub_zstd" if kind == "int8" else "xor_zstd"


def encode(kind: Kind, itemsize: int, base: Optional[memoryview], target: memoryview) -> tuple[str, bytes]:
    """(method, blob) for the target tensor bytes against the base tensor bytes (or None)."""
    method = choose_method(kind, None if base is None else len(base), len(target))
    if method == "xor_zstd":
        blob = _xor_planes_zstd(base, target, itemsize)
    elif method == "sub_zstd":
        diff = np.frombuffer(target, np.uint8) - np.frombuffer(base, np.uint8)
        blob = zstd_compress(diff)
    elif method == "bsdiff4":
        blob = bsdiff4.diff(bytes(base), bytes(target))
    else:
        return "zstd", zstd_compress(target)
    if len(blob) > TRY_RAW_ABOVE * len(target):
        raw = zstd_compress(target)
        if len(raw) <= len(blob):
            return "zstd", raw
    return method, blob


def decode(method: str, itemsize: int, base: Optional[memoryview], blob, length: int) -> bytes:
    """The target tensor bytes; CorruptPatchError when the blob does not fit the header."""
    if method == "zstd":
        return zstd_decompress(blob, length)
    if base is None:
        raise CorruptPatchError(f"method {method} needs a base tensor but none is referenced")
    if method == "bsdiff4":
        try:
            out = bsdiff4.patch(bytes(base), bytes(blob))
        except Exception as exc:  # noqa: BLE001 - bsdiff4 raises bare ValueError/MemoryError on junk
            raise CorruptPatchError(f"bsdiff4 patch does not apply: {exc}") from None
        if len(out) != length:
            raise CorruptPatchError(f"bsdiff4 patch gives {len(out)} bytes, expected {length}")
        return out
    if len(base) != length:
        raise CorruptPatchError(f"{method} needs a base of {length} bytes, got {len(base)}")
    if method == "sub_zstd":
        diff = np.frombuffer(zstd_decompress(blob, length), np.uint8)
        return (np.frombuffer(base, np.uint8) + diff).tobytes()
    if method == "xor_zstd":
        if itemsize < 1 or length % itemsize:
            raise CorruptPatchError(f"tensor of {length} bytes does not split into {itemsize}-byte items")
        planes = np.frombuffer(zstd_decompress(blob, length), np.uint8).reshape(itemsize, -1)
        xor = np.ascontiguousarray(planes.T).reshape(-1)
        return np.bitwise_xor(xor, np.frombuffer(base, np.uint8)).tobytes()
    raise CorruptPatchError(f"unknown tensor method {method!r}")


def _xor_planes_zstd(base: memoryview, target: memoryview, itemsize: int) -> bytes:
    xor = np.bitwise_xor(np.frombuffer(base, np.uint8), np.frombuffer(target, np.uint8))
    rows = xor.reshape(-1, itemsize)
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj(size=len(xor))
    parts = [compressor.compress(np.ascontiguousarray(rows[:, plane])) for plane in range(itemsize)]
    parts.append(compressor.flush())
    return b"".join(parts)
