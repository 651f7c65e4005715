"""Signed packages end to end: keys, every rejection reason, in verification order."""

from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.delta import (
    SignedManifest,
    apply_in_subprocess,
    build_package,
    check_golden,
    chunk_hashes,
    file_sha256,
    keygen,
    load_private_key,
    load_public_key,
    make_golden,
    sign_manifest,
    verify_and_apply,
)
from shared.errors import (
    ApplyFailedError,
    BadManifestError,
    BadSignatureError,
    ConfigError,
    CorruptPatchError,
    ExpiredUpdateError,
    GoldenMismatchError,
    OversizedPatchError,
    ResultHashMismatchError,
    StaleVersionError,
    TruncatedPatchError,
    UpdateRejectedError,
    WrongBaseError,
    WrongModelError,
)
from tests.helpers.delta import mlp_weights, nudge, write_onnx_mlp

NOW = 1_700_000_000


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def files(tmp_path):
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "model.onnx", weights)
    target = write_onnx_mlp(tmp_path / "target.onnx", dict(weights, w1=nudge(weights["w1"])))
    return base, target


def package(files, key, **overrides):
    base, target = files
    kwargs = dict(model_name="digits", version=2, signing_key=key, expires_in_s=3600, now=NOW, chunk_size=4096)
    kwargs.update(overrides)
    return build_package(base, target, **kwargs)


def apply(pkg, base, public_key, tmp_path, *, active_version=1, now=NOW + 10, payload=None, **kw):
    signed = SignedManifest.from_bytes(pkg.signed_manifest)
    return verify_and_apply(
        signed.manifest_bytes, signed.signature, pkg.payload if payload is None else payload, base, public_key,
        active_version=active_version, now=now, out_path=tmp_path / "model.onnx.new", **kw,
    )


def resign(pkg, key, **changes) -> bytes:
    """The package's manifest with fields changed, signed again (a valid but lying manifest)."""
    return sign_manifest(pkg.manifest.model_copy(update=changes), key).to_bytes()


def test_round_trip_writes_the_exact_target(files, key, tmp_path):
    base, target = files
    pkg = package(files, key)
    assert pkg.manifest.patch_format == "tensor"
    assert pkg.manifest.payload_size == len(pkg.payload) < target.stat().st_size
    applied = apply(pkg, base, key.public_key(), tmp_path)
    assert file_sha256(applied.path) == file_sha256(target) == applied.manifest.target_sha256
    assert applied.path.read_bytes() == target.read_bytes()


def test_payload_given_as_a_file_is_verified_and_applied(files, key, tmp_path):
    pkg = package(files, key)
    (tmp_path / "payload.bin").write_bytes(pkg.payload)
    applied = apply(pkg, files[0], key.public_key(), tmp_path, payload=tmp_path / "payload.bin")
    assert applied.path.read_bytes() == files[1].read_bytes()


def test_keys_round_trip_through_pem_files(tmp_path, files):
    priv, pub = keygen(tmp_path / "update.key", tmp_path / "update.pub")
    assert (priv.stat().st_mode & 0o777) == 0o600
    pkg = package(files, load_private_key(priv))
    apply(pkg, files[0], load_public_key(pub), tmp_path)
    with pytest.raises(ConfigError, match="already exists"):
        keygen(priv, tmp_path / "other.pub")
    with pytest.raises(ConfigError, match="not a PEM public key"):
        load_public_key(priv)
    with pytest.raises(ConfigError, match="not found"):
        load_private_key(tmp_path / "missing.key")


def test_wrong_key_is_bad_signature(files, key, tmp_path):
    pkg = package(files, key)
    with pytest.raises(BadSignatureError) as err:
        apply(pkg, files[0], Ed25519PrivateKey.generate().public_key(), tmp_path)
    assert err.value.reason == "bad_signature"


def test_tampered_manifest_is_bad_signature(files, key, tmp_path):
    pkg = package(files, key)
    signed = SignedManifest.from_bytes(pkg.signed_manifest)
    tampered = signed.manifest_bytes.replace(b'"version":2', b'"version":9')
    assert tampered != signed.manifest_bytes
    with pytest.raises(BadSignatureError):
        verify_and_apply(tampered, signed.signature, pkg.payload, files[0], key.public_key(),
                         active_version=1, now=NOW, out_path=tmp_path / "out")
    with pytest.raises(BadSignatureError, match="64"):
        verify_and_apply(signed.manifest_bytes, signed.signature[:10], pkg.payload, files[0], key.public_key(),
                         active_version=1, now=NOW, out_path=tmp_path / "out")
    with pytest.raises(BadSignatureError, match="malformed"):
        SignedManifest.from_bytes(b"{not json")


def test_signed_but_invalid_manifest_is_bad_manifest(key, files, tmp_path):
    data = b'{"model_name": "digits"}'
    with pytest.raises(BadManifestError, match="field"):
        verify_and_apply(data, key.sign(data), b"", files[0], key.public_key(), active_version=1, now=NOW, out_path=tmp_path / "o")


def test_manifest_file_must_be_a_plain_name(files, key, tmp_path):
    pkg = package(files, key)
    lying = SignedManifest.from_bytes(resign(pkg, key, file="../../etc/passwd"))
    with pytest.raises(BadManifestError, match="file"):
        verify_and_apply(lying.manifest_bytes, lying.signature, pkg.payload, files[0], key.public_key(),
                         active_version=1, now=NOW, out_path=tmp_path / "o")


def test_other_model_is_refused(files, key, tmp_path):
    with pytest.raises(WrongModelError):
        apply(package(files, key), files[0], key.public_key(), tmp_path, model_name="banking")


def test_expired_manifest_is_refused(files, key, tmp_path):
    pkg = package(files, key, expires_in_s=60)
    with pytest.raises(ExpiredUpdateError) as err:
        apply(pkg, files[0], key.public_key(), tmp_path, now=NOW + 60)
    assert err.value.reason == "expired"


@pytest.mark.parametrize("active", [2, 3])
def test_same_or_lower_version_is_stale(files, key, tmp_path, active):
    with pytest.raises(StaleVersionError):
        apply(package(files, key), files[0], key.public_key(), tmp_path, active_version=active)


def test_signed_rollback_may_go_down(files, key, tmp_path):
    applied = apply(package(files, key, version=1, rollback=True), files[0], key.public_key(), tmp_path, active_version=3)
    assert applied.manifest.rollback and applied.manifest.version == 1


def test_first_install_accepts_any_version(files, key, tmp_path):
    apply(package(files, key, version=1), files[0], key.public_key(), tmp_path, active_version=None)


def test_payload_longer_than_stated_is_oversized(files, key, tmp_path):
    pkg = package(files, key)
    with pytest.raises(OversizedPatchError):
        apply(pkg, files[0], key.public_key(), tmp_path, payload=pkg.payload + b"\0")


def test_payload_shorter_than_stated_is_truncated(files, key, tmp_path):
    pkg = package(files, key)
    with pytest.raises(TruncatedPatchError):
        apply(pkg, files[0], key.public_key(), tmp_path, payload=pkg.payload[:-1])


def test_flipped_payload_byte_is_corrupt(files, key, tmp_path):
    pkg = package(files, key)
    bad = bytearray(pkg.payload)
    bad[len(bad) // 2] ^= 0x40
    with pytest.raises(CorruptPatchError, match="chunk"):
        apply(pkg, files[0], key.public_key(), tmp_path, payload=bytes(bad))
    assert not (tmp_path / "model.onnx.new").exists()


def test_signed_garbage_payload_is_corrupt_in_the_child(files, key, tmp_path):
    pkg = package(files, key)
    garbage = b"ECDELTA1" + b"\xff" * 100
    lying = resign(pkg, key, payload_size=len(garbage), payload_sha256=hashlib.sha256(garbage).hexdigest(),
                   chunk_sha256=chunk_hashes(garbage, pkg.manifest.chunk_size))
    with pytest.raises(CorruptPatchError):
        apply(pkg._replace(signed_manifest=lying), files[0], key.public_key(), tmp_path, payload=garbage)
    assert not (tmp_path / "model.onnx.new").exists()


def test_changed_base_on_disk_is_wrong_base(files, key, tmp_path):
    pkg = package(files, key)
    files[0].write_bytes(files[0].read_bytes() + b"\0")
    with pytest.raises(WrongBaseError) as err:
        apply(pkg, files[0], key.public_key(), tmp_path)
    assert err.value.reason == "wrong_base"
    with pytest.raises(WrongBaseError, match="does not exist"):
        apply(pkg, tmp_path / "nope.onnx", key.public_key(), tmp_path)


def test_wrong_target_hash_is_result_hash_mismatch(files, key, tmp_path):
    pkg = package(files, key)
    lying = resign(pkg, key, target_sha256="0" * 64)
    with pytest.raises(ResultHashMismatchError) as err:
        apply(pkg._replace(signed_manifest=lying), files[0], key.public_key(), tmp_path)
    assert err.value.reason == "result_hash_mismatch"
    assert not (tmp_path / "model.onnx.new").exists()


def test_wrong_target_size_is_result_hash_mismatch(files, key, tmp_path):
    pkg = package(files, key)
    lying = resign(pkg, key, target_size=pkg.manifest.target_size + 1)
    with pytest.raises(ResultHashMismatchError, match="bytes"):
        apply(pkg._replace(signed_manifest=lying), files[0], key.public_key(), tmp_path)
    assert not (tmp_path / "model.onnx.new").exists()


def test_changed_base_is_refused_by_the_child_with_both_hashes(files, key, tmp_path):
    pkg = package(files, key)
    files[0].write_bytes(files[0].read_bytes() + b"\0")
    with pytest.raises(WrongBaseError, match=r"has SHA-256 [0-9a-f]{16}\.\.\., the patch needs " + pkg.manifest.base_sha256[:16]):
        apply(pkg, files[0], key.public_key(), tmp_path)


def test_child_past_its_time_limit_is_apply_failed(files, key, tmp_path):
    pkg = package(files, key)
    (tmp_path / "p.bin").write_bytes(pkg.payload)
    with pytest.raises(ApplyFailedError, match="longer than"):
        apply_in_subprocess(tmp_path / "p.bin", files[0], tmp_path / "out", timeout_s=0.001)


def test_golden_outputs_are_carried_and_checked(files, key, tmp_path):
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(64).astype(np.float32) for _ in range(3)] + ["some text"]
    expected = [np.full(10, 0.1, np.float32) for _ in inputs]
    golden = make_golden(inputs, expected, atol=1e-3)
    pkg = package(files, key, golden=golden, policy={"threshold": 0.7})
    manifest = apply(pkg, files[0], key.public_key(), tmp_path).manifest
    assert manifest.policy == {"threshold": 0.7}
    assert manifest.golden.cases[3].model_input() == "some text"
    np.testing.assert_array_equal(manifest.golden.cases[0].model_input(), inputs[0])
    check_golden(manifest.golden, lambda batch: np.full((len(batch), 10), 0.1005, np.float32))
    with pytest.raises(GoldenMismatchError) as err:
        check_golden(manifest.golden, lambda batch: np.full((len(batch), 10), 0.2, np.float32))
    assert err.value.reason == "golden_mismatch"
    with pytest.raises(GoldenMismatchError, match="shape"):
        check_golden(manifest.golden, lambda batch: np.zeros((len(batch), 3), np.float32))


def test_every_reason_is_distinct():
    reasons = [cls.reason for cls in UpdateRejectedError.__subclasses__()]
    assert len(reasons) == len(set(reasons))
    assert {"bad_signature", "wrong_base", "corrupt_patch", "truncated_patch", "oversized_patch", "stale_version",
            "expired", "golden_mismatch", "result_hash_mismatch"} <= set(reasons)


def test_build_refuses_nonsense_expiry(files, key):
    from shared.errors import InvalidInputError

    with pytest.raises(InvalidInputError):
        package(files, key, expires_in_s=0)
    with pytest.raises(InvalidInputError, match="version"):
        package(files, key, version=0)
    with pytest.raises(InvalidInputError, match="file"):
        package(files, key, file_name="../model.onnx")


def test_manifest_uses_wall_clock_when_now_is_not_given(files, key):
    manifest = build_package(*files, model_name="m", version=2, signing_key=key, expires_in_s=60).manifest
    assert abs(manifest.issued_at - time.time()) < 60
