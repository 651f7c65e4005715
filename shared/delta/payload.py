"""The patch payload: build it from two files, apply it to the base.

A payload is either a bare zstd frame holding the whole target file (format `zstd`, sent
when a delta would not save enough; nothing is added to it, so it is never larger than the
compressed file), or

    b"ECDELTA1" | body (blobs) | header (zstd-compressed JSON) | u32 little-endian header length

The header comes last so the builder can stream blobs out as it makes them and never holds
the body twice. `header.format` is one of
- `tensor`: per-tensor delta. `base_spans` are the base file's tensor spans; the base file
  minus those spans is the base glue. `glue` turns it into the target glue. `tensors` lists
  the target's spans in file order, each with a method and, where it needs one, a base span.
  The target file is the target glue with each tensor's bytes inserted at its offset.
- `bsdiff4`: one bsdiff4 patch of the whole file (opaque files).

bsdiff4 patches carry no checksum: apply only a payload whose hashes were verified against a
signed manifest. Every header value is still bounds-checked, so a bad payload fails with
CorruptPatchError rather than an IndexError.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Optional

import bsdiff4
import numpy as np
import zstandard

from shared.delta import tensor_diff
from shared.delta.layout import Layout, TensorSpan, detect_layout
from shared.errors import CorruptPatchError

MAGIC = b"ECDELTA1"
_HEADER_LEN = struct.Struct("<I")
#: Send the full file when the delta is not below this fraction of the zstd-compressed file.
FULL_FALLBACK_RATIO = 0.8
#: Opaque files above this are sent whole: whole-file bsdiff4 needs ~17x their size in memory.
WHOLE_BSDIFF_MAX_BYTES = 256 << 20
_MAX_HEADER_BYTES = 64 << 20
#: `drop_pages` skips ranges smaller than this (a syscall per tiny tensor is not worth it).
DROP_PAGES_MIN_BYTES = 16 << 10
#: How far before a range `drop_pages` also gives pages back. A page fault on a file mapping
#: maps the cached pages around it too ("fault-around", 64 KiB by default, aligned to the
#: address, not to our blocks), so reading block k maps again the tail of block k-1, which
#: was already dropped; without the margin those pages stay resident until the map is
#: closed (measured: one 64 KiB block's worth per block read, the whole file in the end).
DROP_PAGES_MARGIN_BYTES = 64 << 10


@dataclass
class BuildStats:
    """What went into a payload, for logs and benchmarks."""

    format: str
    layout: str = "opaque"
    tensors_total: int = 0
    tensors_unchanged: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    delta_bytes: Optional[int] = None
    """Size the delta had before the full-file fallback decision (None for opaque > limit)."""
    full_zstd_bytes: int = 0


# --- build -------------------------------------------------------------------------------------


def build_payload(base_path: str | Path, target_path: str | Path) -> tuple[bytes, BuildStats]:
    """The payload that turns `base_path` into `target_path`, and what it contains."""
    with mapped_file(base_path) as base, mapped_file(target_path) as target:
        full_zstd_bytes = tensor_diff.zstd_size(target, on_block=lambda at, n: drop_pages(target, at, n))
        base_layout, target_layout = detect_layout(base), detect_layout(target)
        if base_layout.format != "opaque" and base_layout.format == target_layout.format:
            delta, stats = _tensor_payload(base, target, base_layout, target_layout)
        elif len(base) + len(target) <= WHOLE_BSDIFF_MAX_BYTES:
            body = _Body()
            body.add(bsdiff4.diff(bytes(base), bytes(target)))
            delta = body.finish({"format": "bsdiff4", "base_size": len(base), "target_size": len(target)})
            stats = BuildStats("bsdiff4")
        else:
            delta, stats = None, BuildStats("bsdiff4")
        stats.full_zstd_bytes = full_zstd_bytes
        stats.delta_bytes = None if delta is None else len(delta)
        if delta is None or len(delta) >= FULL_FALLBACK_RATIO * full_zstd_bytes:
            del delta
            out = io.BytesIO()
            tensor_diff.zstd_compress_into(out, target, on_block=lambda at, n: drop_pages(target, at, n))
            delta = out.getvalue()
            stats.format = "zstd"
        return delta, stats


def _tensor_payload(base, target, base_layout: Layout, target_layout: Layout) -> tuple[bytes, BuildStats]:
    base_view, target_view = memoryview(base), memoryview(target)
    base_by_name = {s.name: s for s in base_layout.spans}
    base_hashes: dict[bytes, TensorSpan] = {}  # filled on first use
    stats = BuildStats("tensor", layout=target_layout.format, tensors_total=len(target_layout.spans))
    body = _Body()
    entries: list[dict[str, Any]] = []

    glue_entry: dict[str, Any] = {"size": _glue_size(len(target), target_layout.spans)}
    base_glue = _glue(base_view, base_layout.spans)
    target_glue = _glue(target_view, target_layout.spans)
    if base_glue == target_glue:
        glue_entry["method"] = "same"
    else:
        patch = bsdiff4.diff(base_glue, target_glue)
        raw = tensor_diff.zstd_compress(target_glue)
        glue_entry["method"], blob = ("bsdiff4", patch) if len(patch) < len(raw) else ("zstd", raw)
        glue_entry["at"], glue_entry["len"] = body.add(blob)
    del base_glue, target_glue

    for span in target_layout.spans:
        itemsize = span.itemsize if span.itemsize > 0 and span.length % span.itemsize == 0 else 1
        entry: dict[str, Any] = {"name": span.name, "offset": span.offset, "length": span.length, "itemsize": itemsize}
        old_span = base_by_name.get(span.name)
        if old_span is not None and _spans_equal(base, old_span, target, span):
            entry.update(method="copy", base=[old_span.offset, old_span.length])
        elif old_span is None and (same := _same_content(base, base_layout, base_hashes, target, span)) is not None:
            entry.update(method="copy", base=[same.offset, same.length])
        else:
            entry["at"], entry["len"], entry["method"] = body.add_encoded(base, old_span, target, span, itemsize)
            if entry["method"] != "zstd":
                entry["base"] = [old_span.offset, old_span.length]
        stats.tensors_unchanged += entry["method"] == "copy"
        stats.methods[entry["method"]] = stats.methods.get(entry["method"], 0) + 1
        entries.append(entry)
        drop_pages(target, span.offset, span.length)
        if old_span is not None:
            drop_pages(base, old_span.offset, old_span.length)

    header = {
        "format": "tensor",
        "base_size": len(base),
        "target_size": len(target),
        "layout": target_layout.format,
        "base_spans": [[s.offset, s.length] for s in base_layout.spans],
        "glue": glue_entry,
        "tensors": entries,
    }
    return body.finish(header), stats


class _Body:
    """Blobs written out as they are made; `finish` appends the header and returns the payload."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._out.write(MAGIC)

    def add(self, blob) -> tuple[int, int]:
        """Append a blob; returns its (offset in the body, length)."""
        at = self._out.tell() - len(MAGIC)
        self._out.write(blob)
        return at, len(blob)

    def add_encoded(self, base, old_span: Optional[TensorSpan], target, span: TensorSpan, itemsize: int) -> tuple[int, int, str]:
        """Encode a target tensor against its base tensor (or none) straight into the body.

        Returns (offset in the body, length, method).
        """

        def release(at: int, n: int) -> None:
            drop_pages(target, span.offset + at, n)
            if old_span is not None:
                drop_pages(base, old_span.offset + at, n)

        old = None if old_span is None else memoryview(base)[old_span.offset : old_span.end]
        new = memoryview(target)[span.offset : span.end]
        start = self._out.tell()
        method = tensor_diff.encode_into(self._out, span.kind, itemsize, old, new, release)
        return start - len(MAGIC), self._out.tell() - start, method

    def finish(self, header: dict[str, Any]) -> bytes:
        header_bytes = tensor_diff.zstd_compress(json.dumps(header, separators=(",", ":")).encode())
        self._out.write(header_bytes)
        self._out.write(_HEADER_LEN.pack(len(header_bytes)))
        return self._out.getvalue()


def _glue(view: memoryview, spans) -> bytes:
    parts, pos = [], 0
    for s in spans:
        parts.append(view[pos : s.offset])
        pos = s.end
    parts.append(view[pos:])
    return b"".join(parts)


def _glue_size(size: int, spans) -> int:
    return size - sum(s.length for s in spans)


def _spans_equal(base, base_span: TensorSpan, target, target_span: TensorSpan) -> bool:
    """Byte equality of two spans, block by block, giving back the pages it has read."""
    if base_span.length != target_span.length:
        return False
    a, b = memoryview(base), memoryview(target)
    for i in range(0, base_span.length, tensor_diff.STREAM_BYTES):
        n = min(tensor_diff.STREAM_BYTES, base_span.length - i)
        x = np.frombuffer(a[base_span.offset + i : base_span.offset + i + n], np.uint8)
        y = np.frombuffer(b[target_span.offset + i : target_span.offset + i + n], np.uint8)
        same = np.array_equal(x, y)
        drop_pages(base, base_span.offset + i, n)
        drop_pages(target, target_span.offset + i, n)
        if not same:
            return False
    return True


def _same_content(base, base_layout: Layout, base_hashes: dict, target, span: TensorSpan) -> Optional[TensorSpan]:
    """A base tensor with exactly this target tensor's bytes (a renamed tensor), or None."""
    if not base_hashes:
        for s in base_layout.spans:
            base_hashes[_digest(memoryview(base)[s.offset : s.end])] = s
            drop_pages(base, s.offset, s.length)
    same = base_hashes.get(_digest(memoryview(target)[span.offset : span.end]))
    return same if same is not None and same.length == span.length else None


def _digest(view: memoryview) -> bytes:
    return hashlib.sha256(view).digest()


def drop_pages(mapped, offset: int, length: int) -> None:
    """Give back the resident pages of a read-only file mapping we are done with.

    Only RSS changes: the pages stay in the page cache and are read again if touched. Keeps
    the diff and apply footprint near the size of what they produce rather than of both
    files. No-op for small ranges and for anything that is not an mmap.
    """
    if length < DROP_PAGES_MIN_BYTES or not isinstance(mapped, mmap.mmap) or not hasattr(mmap, "MADV_DONTNEED"):
        return
    start = max(0, offset - DROP_PAGES_MARGIN_BYTES)
    start -= start % mmap.PAGESIZE
    end = min(offset + length, len(mapped))
    if end > start:
        mapped.madvise(mmap.MADV_DONTNEED, start, end - start)


@contextlib.contextmanager
def mapped_file(path: str | Path) -> Iterator[Any]:
    """A read-only view of a file: an mmap, or b"" for an empty file."""
    with open(path, "rb") as f:
        if f.seek(0, 2) == 0:
            yield b""
            return
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield mm
        finally:
            try:
                mm.close()
            except BufferError:
                pass  # a view is still exported; the map goes when it is collected


# --- read and apply ---------------------------------------------------------------------------


def read_header(payload) -> tuple[dict[str, Any], tuple[int, int]]:
    """The header dict and the (start, end) of the body; a bare zstd frame is `{"format": "zstd"}`."""
    if bytes(payload[:4]) == tensor_diff.ZSTD_MAGIC:
        try:
            size = zstandard.frame_content_size(bytes(payload[:18]))
        except zstandard.ZstdError as exc:
            raise CorruptPatchError(f"zstd payload has a bad frame header: {exc}") from None
        if size < 0:
            raise CorruptPatchError("zstd payload does not state its content size")
        return {"format": "zstd", "target_size": size}, (0, len(payload))
    size = len(payload)
    if size < len(MAGIC) + _HEADER_LEN.size or bytes(payload[: len(MAGIC)]) != MAGIC:
        raise CorruptPatchError(f"payload does not start with {MAGIC!r} or a zstd frame")
    (header_len,) = _HEADER_LEN.unpack_from(payload, size - _HEADER_LEN.size)
    body_end = size - _HEADER_LEN.size - header_len
    if header_len > _MAX_HEADER_BYTES or body_end < len(MAGIC):
        raise CorruptPatchError(f"payload header length {header_len} does not fit a {size}-byte payload")
    raw = bytes(payload[body_end : body_end + header_len])
    try:
        json_size = zstandard.frame_content_size(raw)
    except zstandard.ZstdError as exc:
        raise CorruptPatchError(f"payload header is not a zstd frame: {exc}") from None
    if not 0 <= json_size <= _MAX_HEADER_BYTES:
        raise CorruptPatchError(f"payload header states {json_size} bytes of JSON (limit {_MAX_HEADER_BYTES})")
    try:
        header = json.loads(tensor_diff.zstd_decompress(raw, json_size))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CorruptPatchError(f"payload header is not JSON: {exc}") from None
    if not isinstance(header, dict) or header.get("format") not in ("tensor", "bsdiff4"):
        raise CorruptPatchError("payload header has no known format")
    return header, (len(MAGIC), body_end)


def apply_payload(payload, base, out: BinaryIO) -> tuple[int, str]:
    """Write the target file to `out`; returns (size, sha256 hex) of what was written."""
    header, (body_start, body_end) = read_header(payload)
    body = memoryview(payload)[body_start:body_end]
    base_view = memoryview(base)
    target_size = _int(header, "target_size")
    writer = _HashingWriter(out)
    fmt = header["format"]
    if fmt == "zstd":
        tensor_diff.zstd_decompress_into(writer.write, body, target_size)
        return writer.size, writer.sha256.hexdigest()
    if _int(header, "base_size") != len(base_view):
        raise CorruptPatchError(f"payload was made for a {header['base_size']}-byte base, got {len(base_view)} bytes")
    if fmt == "bsdiff4":
        writer.write(tensor_diff.bsdiff4_patch(base_view, body, target_size))
    else:
        _apply_tensor(header, body, base_view, target_size, writer, base, payload, body_start)
    if writer.size != target_size:
        raise CorruptPatchError(f"patched file is {writer.size} bytes, header says {target_size}")
    return writer.size, writer.sha256.hexdigest()


def _apply_tensor(
    header: dict, body: memoryview, base: memoryview, target_size: int, writer: "_HashingWriter",
    base_mapped, payload_mapped, body_start: int,
) -> None:
    try:
        base_spans = [_span(pair, len(base)) for pair in header["base_spans"]]
        glue_entry, tensors = header["glue"], header["tensors"]
        if not isinstance(tensors, list):
            raise TypeError("tensors is not a list")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptPatchError(f"payload header is malformed: {exc}") from None
    glue_size = _int(glue_entry, "size")
    ordered = [_Span(o, n) for o, n in sorted(base_spans)]
    if any(a.end > b.offset for a, b in zip(ordered, ordered[1:])):
        raise CorruptPatchError("payload header lists overlapping base spans")
    base_glue = _glue(base, ordered)
    method = glue_entry.get("method")
    if method == "same":
        glue = base_glue
    elif method in ("bsdiff4", "zstd"):
        glue = tensor_diff.decode(method, 1, memoryview(base_glue), _blob(glue_entry, body), glue_size)
    else:
        raise CorruptPatchError(f"unknown glue method {method!r}")
    if len(glue) != glue_size:
        raise CorruptPatchError(f"glue is {len(glue)} bytes, header says {glue_size}")
    del base_glue

    pos = glue_at = 0
    for entry in tensors:
        if not isinstance(entry, dict):
            raise CorruptPatchError("tensor entry is not an object")
        offset, length = _int(entry, "offset"), _int(entry, "length")
        gap = offset - pos
        if gap < 0 or glue_at + gap > len(glue):
            raise CorruptPatchError(f"tensor {entry.get('name')!r} at {offset} overlaps or leaves the file")
        writer.write(glue[glue_at : glue_at + gap])
        glue_at += gap
        method = entry.get("method")
        old = None
        if entry.get("base") is not None:
            o, n = _span(entry["base"], len(base))
            old = base[o : o + n]
        if method == "copy":
            if old is None or len(old) != length:
                raise CorruptPatchError(f"tensor {entry.get('name')!r}: copy needs a base span of {length} bytes")
            for i in range(0, length, tensor_diff.BLOCK_BYTES):
                writer.write(old[i : i + tensor_diff.BLOCK_BYTES])
                drop_pages(base_mapped, o + i, min(tensor_diff.BLOCK_BYTES, length - i))
        else:
            base_at = o if old is not None else 0
            tensor_diff.decode_into(
                writer.write, str(method), _int(entry, "itemsize"), old, _blob(entry, body), length,
                on_block=lambda at, size: drop_pages(base_mapped, base_at + at, size),
            )
            drop_pages(payload_mapped, body_start + entry["at"], entry["len"])
        if old is not None:
            drop_pages(base_mapped, o, n)
        pos = offset + length
    writer.write(glue[glue_at:])


@dataclass(frozen=True)
class _Span:
    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def _span(pair, limit: int) -> tuple[int, int]:
    if not isinstance(pair, list) or len(pair) != 2 or not all(type(v) is int for v in pair):
        raise CorruptPatchError(f"bad span {pair!r}")
    offset, length = pair
    if offset < 0 or length < 0 or offset + length > limit:
        raise CorruptPatchError(f"span {pair} is outside a {limit}-byte file")
    return offset, length


def _int(obj: Any, key: str) -> int:
    value = obj.get(key) if isinstance(obj, dict) else None
    if type(value) is not int or value < 0:
        raise CorruptPatchError(f"payload header field {key!r} is {value!r}, expected a non-negative integer")
    return value


def _blob(entry: dict, body: memoryview) -> memoryview:
    at, n = _int(entry, "at"), _int(entry, "len")
    if at + n > len(body):
        raise CorruptPatchError(f"blob at {at} of {n} bytes runs past the payload body ({len(body)} bytes)")
    return body[at : at + n]


class _HashingWriter:
    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data) -> None:
        self.out.write(data)
        self.sha256.update(data)
        self.size += len(data)
