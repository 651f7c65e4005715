"""Payload integrity against a verified manifest: per-chunk hashes, total length, whole hash.

`PayloadAssembler` collects chunks into a file as they arrive, in any order, checking each
one before it is written. A restarted download opens the same file and keeps every chunk
already on disk whose hash still matches, so it fetches only `missing()`.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from shared.delta.manifest import Manifest
from shared.errors import CorruptPatchError, InvalidInputError, OversizedPatchError, TruncatedPatchError


def chunk_hashes(payload: bytes, chunk_size: int) -> list[str]:
    view = memoryview(payload)
    return [hashlib.sha256(view[i : i + chunk_size]).hexdigest() for i in range(0, len(view), chunk_size)]


def chunk_of(payload: bytes, chunk_size: int, index: int) -> bytes:
    """Chunk `index` of a payload (what a server sends for one chunk request)."""
    if not 0 <= index * chunk_size < max(len(payload), 1):
        raise InvalidInputError(f"chunk {index} is beyond a {len(payload)}-byte payload in {chunk_size}-byte chunks")
    return payload[index * chunk_size : (index + 1) * chunk_size]


def verify_payload(manifest: Manifest, payload: bytes) -> None:
    """Length first (oversized / truncated), then each chunk hash, then the whole hash."""
    if len(payload) > manifest.payload_size:
        raise OversizedPatchError(f"payload is {len(payload)} bytes; manifest states {manifest.payload_size}")
    if len(payload) < manifest.payload_size:
        raise TruncatedPatchError(f"payload is {len(payload)} bytes; manifest states {manifest.payload_size}")
    view = memoryview(payload)
    for index, want in enumerate(manifest.chunk_sha256):
        start = index * manifest.chunk_size
        if hashlib.sha256(view[start : start + manifest.chunk_size]).hexdigest() != want:
            raise CorruptPatchError(f"payload chunk {index} of {manifest.chunk_count} does not match its hash")
    if hashlib.sha256(view).hexdigest() != manifest.payload_sha256:
        raise CorruptPatchError("payload does not match its whole-payload hash")


class PayloadAssembler:
    """Writes verified chunks of one manifest's payload into `path`; resumable."""

    def __init__(self, manifest: Manifest, path: str | Path) -> None:
        self.manifest = manifest
        self.path = Path(path)
        self._have: set[int] = set()
        mode = "r+b" if self.path.exists() else "w+b"
        self._file = open(self.path, mode)
        self._resume()

    def _resume(self) -> None:
        size = self._file.seek(0, os.SEEK_END)
        if size > self.manifest.payload_size:
            self._file.truncate(self.manifest.payload_size)
            size = self.manifest.payload_size
        for index in range(self.manifest.chunk_count):
            length = self.manifest.chunk_length(index)
            start = index * self.manifest.chunk_size
            if start + length > size:
                break
            self._file.seek(start)
            if hashlib.sha256(self._file.read(length)).hexdigest() == self.manifest.chunk_sha256[index]:
                self._have.add(index)

    def missing(self) -> list[int]:
        """Chunk indexes still to fetch, in order."""
        return [i for i in range(self.manifest.chunk_count) if i not in self._have]

    @property
    def bytes_verified(self) -> int:
        return sum(self.manifest.chunk_length(i) for i in self._have)

    def add_chunk(self, index: int, data: bytes) -> None:
        """Check chunk `index` against the manifest and write it; refuses what does not fit."""
        if not 0 <= index < self.manifest.chunk_count:
            raise OversizedPatchError(
                f"chunk {index} is beyond the payload's {self.manifest.chunk_count} chunks ({self.manifest.payload_size} bytes)"
            )
        want = self.manifest.chunk_length(index)
        if len(data) > want:
            raise OversizedPatchError(f"chunk {index} is {len(data)} bytes; manifest states {want}")
        if len(data) < want:
            raise TruncatedPatchError(f"chunk {index} is {len(data)} bytes; manifest states {want}")
        if hashlib.sha256(data).hexdigest() != self.manifest.chunk_sha256[index]:
            raise CorruptPatchError(f"chunk {index} does not match its hash")
        self._file.seek(index * self.manifest.chunk_size)
        self._file.write(data)
        self._file.flush()  # in the OS now: a restarted download keeps it
        self._have.add(index)

    def finish(self) -> Path:
        """Flush and check the whole payload; the path of the complete, verified payload file."""
        missing = self.missing()
        if missing:
            raise TruncatedPatchError(
                f"payload incomplete: {len(missing)} of {self.manifest.chunk_count} chunks missing (first: {missing[0]})"
            )
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.seek(0)
        digest = hashlib.sha256()
        while block := self._file.read(1 << 20):
            digest.update(block)
        if digest.hexdigest() != self.manifest.payload_sha256:
            raise CorruptPatchError("assembled payload does not match its whole-payload hash")
        self.close()
        return self.path

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "PayloadAssembler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
