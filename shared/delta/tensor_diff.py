"""Encode one tensor's new bytes against its old bytes, and decode them back.

Methods (the name is stored in the patch header):
- `xor_zstd`: XOR with the base, split into byte planes (all first bytes of each element,
  then all second bytes...), zstd. Small float updates leave sign/exponent bytes equal, so
  those planes are near-zero and compress well. Used for same-size float tensors of any
  size, and for same-size wide integer tensors too large for bsdiff4. Planes are formed per
  block of `BLOCK_BYTES`, so both sides work in bounded memory.
- `sub_zstd`: byte-wise difference (target - base mod 256), zstd, per block. For same-size
  int8 tensors: a retrained quantized weight moves by a few steps everywhere, a
  small-integer signal zstd's entropy coder handles well. bsdiff4 does poorly there (it
  finds few exact matches and stores most bytes as "extra"), costs a suffix sort and ~17x
  memory; up to `BSDIFF_MAX_BYTES` it is still tried and kept when smaller.
- `bsdiff4`: small int8 tensors (when it wins), same-size tensors of other integer types up
  to `BSDIFF_MAX_BYTES`, and tensors whose size changed.
- `zstd`: the new bytes alone, when there is no base, the delta is no smaller, or a resized
  tensor is too large for bsdiff4.
"""

from __future__ import annotations

from typing import BinaryIO, Callable, Iterator, Optional

import bsdiff4
import numpy as np
import zstandard

from shared.delta.layout import Kind
from shared.errors import CorruptPatchError

ZSTD_LEVEL = 3
#: Same-size tensors above this skip bsdiff4 (its memory is ~17x the input, its time n log n).
BSDIFF_MAX_BYTES = 256 << 10
#: Resized tensors above this are sent whole rather than bsdiffed (memory).
BSDIFF_RESIZED_MAX_BYTES = 32 << 20
#: Block size of the byte planes (`xor_zstd`) on both sides; a multiple of every itemsize.
#: Part of the payload format: changing it breaks payloads already published.
BLOCK_BYTES = 1 << 20
#: What the encoder hands zstd at a time (the byte-plane transform works in pieces this
#: size inside a block), and the pages of the two files it holds at once for `sub_zstd` and
#: plain `zstd`. Not part of the format.
STREAM_BYTES = 64 << 10
#: zstd window of the plain frames the encoder writes (raw tensors, glue, the whole file): at
#: most 2**WINDOW_LOG bytes (smaller inputs get a smaller one). Weight bytes have few
#: long-distance matches, so a small window costs about nothing in size, and it bounds the
#: streaming buffers on both sides (the encoder keeps a window plus a block; the decoder
#: needs the window).
WINDOW_LOG = 18
#: Cap on zstd's hash and chain table logs for plain frames (level 3 would use 17/16 for
#: inputs over 256 KiB: 0.75 MiB of tables). Same sizes on the benchmark files, half the
#: compression context.
HASH_LOG = 14
#: The XOR planes and byte differences of `xor_zstd` / `sub_zstd` are close to noise: what
#: zstd gains there is entropy coding, and the short matches a stronger match finder takes
#: cost more than the literals they replace. Level 1 with small tables and a 64 KiB window
#: made the benchmark deltas 1.5-15 % smaller than level 3 with a 256 KiB window, with a
#: context of ~0.3 MiB instead of ~1.3 MiB (and a 64 KiB window for the decoder).
DELTA_ZSTD_LEVEL = 1
DELTA_WINDOW_LOG = 16
DELTA_HASH_LOG = 10
#: If a delta is above this fraction of the tensor, also try plain zstd and keep the smaller.
TRY_RAW_ABOVE = 0.5

METHODS = ("xor_zstd", "sub_zstd", "bsdiff4", "zstd")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def choose_method(kind: Kind, base_length: Optional[int], length: int) -> str:
    """The main method for a changed tensor (`encode_into` may keep a smaller alternative)."""
    if base_length is None:
        return "zstd"
    if base_length != length:
        return "bsdiff4" if max(base_length, length) <= BSDIFF_RESIZED_MAX_BYTES else "zstd"
    if kind == "float":
        return "xor_zstd"
    if kind == "int8":
        return "sub_zstd"
    return "bsdiff4" if length <= BSDIFF_MAX_BYTES else "xor_zstd"


def encode_into(
    out: BinaryIO, kind: Kind, itemsize: int, base: Optional[memoryview], target: memoryview,
    on_block: Optional[Callable[[int, int], object]] = None,
) -> str:
    """Append the encoded target tensor to the seekable `out`; returns the method used.

    `on_block(offset, length)` is called after each block of the tensor has been read (the
    caller may release those pages).
    """
    start = out.tell()
    method = choose_method(kind, None if base is None else len(base), len(target))
    if method == "xor_zstd":
        _blockwise_zstd(out, base, target, lambda old, new: _xor_planes(old, new, itemsize), on_block, BLOCK_BYTES)
    elif method == "sub_zstd":
        _blockwise_zstd(out, base, target, lambda old, new: (np.subtract(new, old),), on_block)
        if len(target) <= BSDIFF_MAX_BYTES:
            patch = bsdiff4.diff(bytes(base), bytes(target))
            if len(patch) < out.tell() - start:
                _rewind(out, start)
                out.write(patch)
                method = "bsdiff4"
    elif method == "bsdiff4":
        out.write(bsdiff4.diff(bytes(base), bytes(target)))
    else:
        zstd_compress_into(out, target, on_block)
        return "zstd"
    written = out.tell() - start
    if written > TRY_RAW_ABOVE * len(target) and zstd_size(target, on_block) <= written:
        _rewind(out, start)
        zstd_compress_into(out, target, on_block)
        return "zstd"
    return method


def decode_into(
    write: Callable[[bytes], object], method: str, itemsize: int, base: Optional[memoryview], blob, length: int,
    on_block: Optional[Callable[[int, int], object]] = None,
) -> None:
    """Pass the target tensor bytes to `write` (in blocks for the large methods).

    `on_block(offset, length)` is called after each block of the base has been used.
    CorruptPatchError when the blob does not fit the header.
    """
    if method == "zstd":
        zstd_decompress_into(write, blob, length)
        return
    if base is None:
        raise CorruptPatchError(f"method {method} needs a base tensor but none is referenced")
    if method == "bsdiff4":
        write(bsdiff4_patch(base, blob, length))
        return
    if len(base) != length:
        raise CorruptPatchError(f"{method} needs a base of {length} bytes, got {len(base)}")
    old = np.frombuffer(base, np.uint8)
    if method == "sub_zstd":
        undo = np.add
    elif method == "xor_zstd":
        if itemsize < 1 or length % itemsize or BLOCK_BYTES % itemsize:
            raise CorruptPatchError(f"tensor of {length} bytes does not split into {itemsize}-byte items")
        undo = lambda old_block, planes: np.bitwise_xor(old_block, _unplanes(planes, itemsize))  # noqa: E731
    else:
        raise CorruptPatchError(f"unknown tensor method {method!r}")
    at = 0
    for block in _zstd_blocks(blob, length, BLOCK_BYTES):
        n = len(block)
        write(undo(old[at : at + n], np.frombuffer(block, np.uint8)).tobytes())
        if on_block is not None:
            on_block(at, n)
        at += n


def decode(method: str, itemsize: int, base: Optional[memoryview], blob, length: int) -> bytes:
    """The target bytes in one piece (for small things such as the glue)."""
    parts: list[bytes] = []
    decode_into(parts.append, method, itemsize, base, blob, length)
    return b"".join(parts)


def bsdiff4_patch(base, patch, length: int) -> bytes:
    try:
        out = bsdiff4.patch(bytes(base), bytes(patch))
    except Exception as exc:
        raise CorruptPatchError(f"bsdiff4 patch does not apply: {exc}") from None
    if len(out) != length:
        raise CorruptPatchError(f"bsdiff4 patch gives {len(out)} bytes, expected {length}")
    return out


# --- zstd helpers ----------------------------------------------------------------------------


def zstd_compressor(size: int, level: int = ZSTD_LEVEL, *, delta: bool = False) -> zstandard.ZstdCompressor:
    """A compressor for `size` bytes: plain bytes at `level` with the window capped at
    2**WINDOW_LOG and the tables at HASH_LOG, or (`delta`) difference planes at the DELTA_*
    settings."""
    if delta:
        level, max_window_log, max_hash_log = DELTA_ZSTD_LEVEL, DELTA_WINDOW_LOG, DELTA_HASH_LOG
    else:
        max_window_log, max_hash_log = WINDOW_LOG, HASH_LOG
    window_log = min(max_window_log, max(zstandard.WINDOWLOG_MIN, (max(size, 1) - 1).bit_length()))
    params = zstandard.ZstdCompressionParameters.from_level(level, source_size=size, window_log=window_log)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=size, window_log=window_log,
        hash_log=min(params.hash_log, max_hash_log), chain_log=min(params.chain_log, max_hash_log),
    )
    return zstandard.ZstdCompressor(compression_params=params)


def zstd_compress(data, level: int = ZSTD_LEVEL) -> bytes:
    return zstd_compressor(len(data), level).compress(data)


def zstd_compress_into(out: BinaryIO, data, on_block: Optional[Callable[[int, int], object]] = None) -> int:
    """Stream zstd(data) into `out` (one frame, content size recorded); returns bytes written.

    `on_block(offset, length)` is called after each block of `data` is consumed.
    """
    return _blockwise_zstd(out, None, data, None, on_block)


def zstd_size(data, on_block: Optional[Callable[[int, int], object]] = None) -> int:
    """Length of zstd(data), without keeping the compressed bytes."""
    return zstd_compress_into(_Counter(), data, on_block)


def _blockwise_zstd(out, base: Optional[memoryview], target, transform, on_block=None, block_bytes: int = STREAM_BYTES) -> int:
    """One zstd frame of the pieces transform(old_block, new_block) yields, block by block.

    `on_block(offset, length)` after each block: the caller may give back its pages.
    """
    new = np.frombuffer(target, np.uint8)
    old = None if base is None else np.frombuffer(base, np.uint8)
    compressor = zstd_compressor(len(new), delta=transform is not None).compressobj(size=len(new))
    written = 0
    for a in range(0, len(new), block_bytes):
        pieces = (new[a : a + block_bytes],) if transform is None else transform(old[a : a + block_bytes], new[a : a + block_bytes])
        for piece in pieces:
            written += out.write(compressor.compress(piece)) or 0
        if on_block is not None:
            on_block(a, min(block_bytes, len(new) - a))
    written += out.write(compressor.flush()) or 0
    return written


def _zstd_blocks(blob, length: int, block_bytes: int) -> Iterator[bytearray]:
    """The decompressed frame in blocks of `block_bytes`; it must hold exactly `length` bytes.

    Reads through a stream reader, so memory stays at one block whatever the frame claims.
    """
    if bytes(blob[:4]) != ZSTD_MAGIC:
        raise CorruptPatchError("blob is not a zstd frame")
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False)
    remaining = length
    try:
        while remaining > 0:
            block = bytearray(min(block_bytes, remaining))
            got = _fill(reader, memoryview(block))
            if got < len(block):
                raise CorruptPatchError(f"zstd frame holds {length - remaining + got} bytes, expected {length}")
            remaining -= got
            yield block
        if reader.read(1):
            raise CorruptPatchError(f"zstd frame holds more than the expected {length} bytes")
    except zstandard.ZstdError as exc:
        raise CorruptPatchError(f"zstd frame does not decode: {exc}") from None


def _fill(reader, view: memoryview) -> int:
    got = 0
    while got < len(view):
        n = reader.readinto(view[got:])
        if not n:
            break
        got += n
    return got


def zstd_decompress(blob, size: int) -> bytes:
    """Decompress a frame that must hold exactly `size` bytes."""
    return b"".join(_zstd_blocks(blob, size, max(size, 1)))


def zstd_decompress_into(write: Callable[[bytes], object], blob, size: int) -> None:
    for block in _zstd_blocks(blob, size, BLOCK_BYTES):
        write(block)


class _Counter:
    def write(self, chunk) -> int:
        return len(chunk)


def _rewind(out: BinaryIO, position: int) -> None:
    out.seek(position)
    out.truncate()


def _planes(block: np.ndarray, itemsize: int) -> np.ndarray:
    """Bytes of a block regrouped: all first bytes of each item, then all second bytes..."""
    return np.ascontiguousarray(block.reshape(-1, itemsize).T)


def _xor_planes(old: np.ndarray, new: np.ndarray, itemsize: int) -> Iterator[np.ndarray]:
    """`_planes(old ^ new)` in pieces of at most STREAM_BYTES // itemsize bytes, in order, so
    neither the XOR nor the regrouped block is ever held whole."""
    old_items, new_items = old.reshape(-1, itemsize), new.reshape(-1, itemsize)
    step = max(1, STREAM_BYTES // itemsize)
    for k in range(itemsize):
        for i in range(0, len(new_items), step):
            yield np.bitwise_xor(old_items[i : i + step, k], new_items[i : i + step, k])


def _unplanes(planes: np.ndarray, itemsize: int) -> np.ndarray:
    return np.ascontiguousarray(planes.reshape(itemsize, -1).T).reshape(-1)
