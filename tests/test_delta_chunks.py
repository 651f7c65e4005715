"""Chunked payload download: each chunk checked on arrival, resume after a restart."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.delta import PayloadAssembler, apply_verified, build_package, chunk_of, install_file, previous_path, verify_manifest
from shared.delta.manifest import SignedManifest
from shared.errors import CorruptPatchError, InvalidInputError, OversizedPatchError, TruncatedPatchError
from tests.helpers.delta import mlp_weights, nudge, write_onnx_mlp

CHUNK = 1024
NOW = 1_700_000_000


@pytest.fixture
def published(tmp_path):
    """A base file on the agent, and the manifest + payload the cloud published."""
    key = Ed25519PrivateKey.generate()
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "model.onnx", weights)
    target = write_onnx_mlp(tmp_path / "target.onnx", dict(weights, w1=nudge(weights["w1"], 0.05)))
    pkg = build_package(base, target, model_name="m", version=2, signing_key=key, expires_in_s=60, chunk_size=CHUNK, now=NOW)
    signed = SignedManifest.from_bytes(pkg.signed_manifest)
    manifest = verify_manifest(signed.manifest_bytes, signed.signature, key.public_key(), active_version=1, now=NOW)
    assert manifest.chunk_count >= 3
    return manifest, pkg.payload, base, target


def chunk(payload: bytes, index: int) -> bytes:
    return chunk_of(payload, CHUNK, index)


def test_chunks_in_any_order_assemble_the_payload(published, tmp_path):
    manifest, payload, base, target = published
    with PayloadAssembler(manifest, tmp_path / "payload.part") as asm:
        for index in reversed(asm.missing()):
            asm.add_chunk(index, chunk(payload, index))
        path = asm.finish()
    assert path.read_bytes() == payload
    old = base.read_bytes()
    applied = apply_verified(manifest, path, base, tmp_path / ".model.onnx.new")
    assert applied.path.read_bytes() == target.read_bytes()
    install_file(applied.path, base)
    assert base.read_bytes() == target.read_bytes()
    assert previous_path(base).read_bytes() == old


def test_download_resumes_after_a_restart(published, tmp_path):
    manifest, payload, _, _ = published
    part = tmp_path / "payload.part"
    first = PayloadAssembler(manifest, part)
    first.add_chunk(0, chunk(payload, 0))
    first.add_chunk(2, chunk(payload, 2))
    first.close()  # the agent restarts here
    second = PayloadAssembler(manifest, part)
    assert 0 not in second.missing() and 2 not in second.missing()
    assert 1 in second.missing()
    assert second.bytes_verified == 2 * CHUNK
    for index in second.missing():
        second.add_chunk(index, chunk(payload, index))
    assert second.finish().read_bytes() == payload


def test_resume_drops_chunks_damaged_on_disk(published, tmp_path):
    manifest, payload, _, _ = published
    part = tmp_path / "payload.part"
    part.write_bytes(payload[:CHUNK] + b"\xee" * CHUNK + payload[2 * CHUNK :] + b"junk past the end")
    asm = PayloadAssembler(manifest, part)
    assert asm.missing() == [1]
    asm.add_chunk(1, chunk(payload, 1))
    assert asm.finish().read_bytes() == payload


def test_bad_chunks_are_refused_with_their_reason(published, tmp_path):
    manifest, payload, _, _ = published
    last = manifest.chunk_count - 1
    with PayloadAssembler(manifest, tmp_path / "payload.part") as asm:
        with pytest.raises(CorruptPatchError, match="chunk 0"):
            asm.add_chunk(0, b"\0" * CHUNK)
        with pytest.raises(OversizedPatchError):
            asm.add_chunk(0, chunk(payload, 0) + b"x")
        with pytest.raises(OversizedPatchError, match="beyond"):
            asm.add_chunk(manifest.chunk_count, b"x")
        with pytest.raises(OversizedPatchError):
            asm.add_chunk(last, chunk(payload, last) + b"extra")
        with pytest.raises(TruncatedPatchError):
            asm.add_chunk(1, chunk(payload, 1)[:-1])
        assert asm.missing() == list(range(manifest.chunk_count))
        asm.add_chunk(0, chunk(payload, 0))
        with pytest.raises(TruncatedPatchError, match="missing"):
            asm.finish()
    with pytest.raises(InvalidInputError, match="beyond"):
        chunk_of(payload, CHUNK, manifest.chunk_count)
