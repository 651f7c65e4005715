"""Payload build/apply: byte identity, per-tensor methods, fallbacks, layout detection."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import onnx
import pytest
import zstandard

from shared.delta.layout import detect_layout
from shared.delta.package import payload_summary
from shared.delta.payload import apply_payload, build_payload
from shared.delta.tensor_diff import ZSTD_LEVEL
from shared.errors import CorruptPatchError
from tests.helpers.delta import mlp_weights, nudge, write_onnx_mlp, write_safetensors


def roundtrip(base_path, target_path) -> bytes:
    payload, _ = build_payload(base_path, target_path)
    out = io.BytesIO()
    size, sha = apply_payload(payload, base_path.read_bytes(), out)
    assert out.getvalue() == target_path.read_bytes()
    assert size == target_path.stat().st_size
    return payload


def methods(payload: bytes) -> dict[str, str]:
    return {t["name"]: t["method"] for t in payload_summary(payload)["tensors"]}


def test_onnx_layout_spans_are_the_initializer_raw_data(tmp_path):
    weights = mlp_weights()
    path = write_onnx_mlp(tmp_path / "m.onnx", weights)
    data = path.read_bytes()
    layout = detect_layout(data)
    assert layout.format == "onnx"
    spans = {s.name: s for s in layout.spans}
    # b2 (40 bytes) is below the span threshold and stays in the glue
    assert set(spans) == {"w1", "b1", "w2", "q"}
    for name, span in spans.items():
        assert data[span.offset : span.end] == weights[name].tobytes()
    assert spans["w1"].kind == "float" and spans["q"].kind == "int8"


def test_onnx_round_trip_is_byte_identical_and_skips_unchanged(tmp_path):
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "a.onnx", weights)
    q = weights["q"].copy()
    q[:8] += 1
    new = dict(weights, w1=nudge(weights["w1"]), q=q)
    target = write_onnx_mlp(tmp_path / "b.onnx", new)
    payload = roundtrip(base, target)
    summary = payload_summary(payload)
    assert summary["format"] == "tensor" and summary["layout"] == "onnx"
    got = methods(payload)
    assert got["w1"] == "xor_zstd"
    assert got["q"] in ("sub_zstd", "bsdiff4")  # whichever is smaller
    assert got["b1"] == "copy" and got["w2"] == "copy"
    sent = {t["name"]: t["bytes"] for t in summary["tensors"]}
    assert sent["b1"] == 0 and sent["w2"] == 0
    onnx.checker.check_model(onnx.load(str(target)))


def test_graph_change_goes_through_the_glue(tmp_path):
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "a.onnx", weights)
    target_model = onnx.load(str(write_onnx_mlp(tmp_path / "b.onnx", weights)))
    target_model.graph.node[2].op_type = "Sigmoid"
    target_model.doc_string = "retrained"
    onnx.save(target_model, str(tmp_path / "b.onnx"))
    payload = roundtrip(base, tmp_path / "b.onnx")
    assert payload_summary(payload)["glue"]["method"] in ("bsdiff4", "zstd")
    assert set(methods(payload).values()) == {"copy"}


def test_safetensors_round_trip_with_added_removed_and_resized_tensors(tmp_path):
    rng = np.random.default_rng(3)
    old = {
        "emb": rng.standard_normal((200, 64)).astype(np.float32),
        "gone": rng.standard_normal((32, 32)).astype(np.float32),
        "grow": rng.standard_normal((10, 32)).astype(np.float32),
        "same": rng.standard_normal((50, 50)).astype(np.float16),
    }
    new = {
        "emb": old["emb"],
        "grow": np.concatenate([old["grow"], rng.standard_normal((5, 32)).astype(np.float32)]),
        "same": old["same"],
        "head.weight": rng.standard_normal((77, 64)).astype(np.float32),
        "renamed": old["gone"],
    }
    base = write_safetensors(tmp_path / "a.safetensors", old)
    target = write_safetensors(tmp_path / "b.safetensors", new)
    payload = roundtrip(base, target)
    got = methods(payload)
    assert got["emb"] == "copy" and got["same"] == "copy"
    assert got["renamed"] == "copy"  # found by content
    assert got["grow"] == "bsdiff4"
    assert got["head.weight"] == "zstd"


def test_head_only_change_sends_only_the_head(tmp_path):
    rng = np.random.default_rng(4)
    body = {f"layer{i}.weight": rng.standard_normal((256, 256)).astype(np.float32) for i in range(6)}
    base = write_safetensors(tmp_path / "a.safetensors", {**body, "head": rng.standard_normal((10, 256)).astype(np.float32)})
    target = write_safetensors(tmp_path / "b.safetensors", {**body, "head": rng.standard_normal((10, 256)).astype(np.float32)})
    payload = roundtrip(base, target)
    assert len(payload) < 0.02 * target.stat().st_size
    assert [t["name"] for t in payload_summary(payload)["tensors"] if t["bytes"]] == ["head"]


def test_opaque_files_use_whole_file_bsdiff4(tmp_path):
    rng = np.random.default_rng(5)
    text = rng.integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    (tmp_path / "a.bin").write_bytes(text)
    (tmp_path / "b.bin").write_bytes(text[:1000] + b"inserted" + text[1000:])
    payload = roundtrip(tmp_path / "a.bin", tmp_path / "b.bin")
    assert payload_summary(payload)["format"] == "bsdiff4"
    assert len(payload) < 1000


def test_unrelated_target_falls_back_to_the_full_file(tmp_path):
    rng = np.random.default_rng(6)
    base = write_safetensors(tmp_path / "a.safetensors", {"w": rng.standard_normal((128, 128)).astype(np.float32)})
    target = write_safetensors(tmp_path / "b.safetensors", {"w": rng.standard_normal((128, 128)).astype(np.float32)})
    payload = roundtrip(base, target)
    assert payload_summary(payload)["format"] == "zstd"
    assert payload == zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(target.read_bytes())


def test_large_int8_tensors_use_the_byte_difference(tmp_path):
    rng = np.random.default_rng(8)
    q = rng.integers(-100, 100, size=(1024, 512)).astype(np.int8)
    moved = (q + rng.integers(-2, 3, size=q.shape)).astype(np.int8)
    base = write_safetensors(tmp_path / "a.safetensors", {"q": q})
    target = write_safetensors(tmp_path / "b.safetensors", {"q": moved})
    payload = roundtrip(base, target)
    assert methods(payload) == {"q": "sub_zstd"}
    assert len(payload) < 0.5 * q.nbytes


def test_empty_and_tiny_files_round_trip(tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "tiny").write_bytes(b"abc")
    roundtrip(tmp_path / "empty", tmp_path / "tiny")
    roundtrip(tmp_path / "tiny", tmp_path / "empty")


def test_truncated_safetensors_header_is_treated_as_opaque(tmp_path):
    bogus = struct.pack("<Q", 10_000) + b'{"a":'
    assert detect_layout(bogus).format == "opaque"
    assert detect_layout(b"\x08\x01not a model at all").format == "opaque"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda p: b"NOTDELTA" + p[8:],
        lambda p: p[:-5] + b"x" + p[-4:],
        lambda p: _rewrite_raw_header(p, b"not json"),
        lambda p: p[:-4] + struct.pack("<I", len(p)),
        lambda p: p[: len(p) // 2],
        lambda p: _rewrite_header(p, lambda h: h["tensors"][0].update(offset=10**9)),
        lambda p: _rewrite_header(p, lambda h: h["tensors"][0].update(method="copy", base=[0, 3])),
        lambda p: _rewrite_header(p, lambda h: h.update(base_spans=[[0, 10**9]])),
        lambda p: _rewrite_header(p, lambda h: h.update(target_size=h["target_size"] + 1)),
    ],
)
def test_malformed_payloads_fail_as_corrupt_patch(tmp_path, mutate):
    weights = mlp_weights()
    base = write_onnx_mlp(tmp_path / "a.onnx", weights)
    target = write_onnx_mlp(tmp_path / "b.onnx", dict(weights, w1=nudge(weights["w1"])))
    payload, _ = build_payload(base, target)
    with pytest.raises(CorruptPatchError):
        apply_payload(mutate(payload), base.read_bytes(), io.BytesIO())


def _rewrite_raw_header(payload: bytes, raw_json: bytes) -> bytes:
    (length,) = struct.unpack_from("<I", payload, len(payload) - 4)
    raw = zstandard.ZstdCompressor().compress(raw_json)
    return payload[: len(payload) - 4 - length] + raw + struct.pack("<I", len(raw))


def _rewrite_header(payload: bytes, change) -> bytes:
    (length,) = struct.unpack_from("<I", payload, len(payload) - 4)
    start = len(payload) - 4 - length
    header = json.loads(zstandard.ZstdDecompressor().decompress(payload[start : start + length]))
    change(header)
    raw = zstandard.ZstdCompressor().compress(json.dumps(header).encode())
    return payload[:start] + raw + struct.pack("<I", len(raw))

def test_onnx_typed_float_data_is_a_span_too(tmp_path):
    from onnx import TensorProto, helper

    def write(path, values):
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["input", "W"], ["probs"])], "typed",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 32])],
            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [None, 32])],
            initializer=[helper.make_tensor("W", TensorProto.FLOAT, [32, 32], values.ravel().tolist())],
        )
        onnx.save(helper.make_model(graph), str(path))
        return path

    rng = np.random.default_rng(9)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    base = write(tmp_path / "a.onnx", w)
    target = write(tmp_path / "b.onnx", nudge(w))
    spans = detect_layout(base.read_bytes()).spans
    assert [(s.name, s.kind, s.length) for s in spans] == [("W", "float", w.nbytes)]
    payload = roundtrip(base, target)
    assert methods(payload) == {"W": "xor_zstd"}


def test_blockwise_build_round_trips_tensors_across_many_pieces(tmp_path):
    """Tensors at unaligned offsets, longer than several stream pieces and format blocks, with
    changes only in the last partial piece, in the middle, or nowhere: the mmapped build
    reads, compares and gives back pages piece by piece, and the result is byte-identical."""
    from shared.delta import tensor_diff

    rng = np.random.default_rng(11)
    n = 2 * tensor_diff.BLOCK_BYTES + 3 * tensor_diff.STREAM_BYTES + 123  # not a multiple of anything
    q = rng.integers(-100, 100, n, dtype=np.int8)
    q_tail = q.copy()
    q_tail[-5:] += 1  # only the last, partial piece differs
    w = rng.standard_normal(n // 4 + 7).astype(np.float32)
    w_mid = w.copy()
    w_mid[len(w) // 2 : len(w) // 2 + 100] *= 1.001
    same = rng.standard_normal(tensor_diff.STREAM_BYTES // 4 + 1).astype(np.float32)
    odd = np.arange(3, dtype=np.int8)  # shifts every later tensor off page alignment
    base = write_safetensors(tmp_path / "a.safetensors", {"a_odd": odd, "q": q, "same": same, "w": w})
    target = write_safetensors(tmp_path / "b.safetensors", {"a_odd": odd, "q": q_tail, "same": same, "w": w_mid})
    payload = roundtrip(base, target)
    got = methods(payload)
    assert got["q"] in ("sub_zstd", "zstd") and got["w"] == "xor_zstd" and got["same"] == "copy"
    assert len(payload) < 0.05 * target.stat().st_size


def test_spans_equal_sees_a_difference_in_the_last_partial_piece(tmp_path):
    from shared.delta.layout import TensorSpan
    from shared.delta.payload import _spans_equal, mapped_file
    from shared.delta.tensor_diff import STREAM_BYTES

    data = np.random.default_rng(12).integers(0, 256, 3 * STREAM_BYTES + 1001, dtype=np.uint8).tobytes()
    (tmp_path / "a").write_bytes(b"x" + data)
    (tmp_path / "b").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    (tmp_path / "c").write_bytes(data)
    span_a = TensorSpan("t", "int8", 1, 1, len(data))
    span_b = TensorSpan("t", "int8", 1, 0, len(data))
    with mapped_file(tmp_path / "a") as a, mapped_file(tmp_path / "b") as b, mapped_file(tmp_path / "c") as c:
        assert not _spans_equal(a, span_a, b, span_b)
        assert _spans_equal(a, span_a, c, span_b)
        assert a[1:] == c[:]  # pages given back read again with the same bytes


def test_drop_pages_keeps_the_mapped_bytes(tmp_path):
    import mmap as mmap_module

    from shared.delta.payload import drop_pages, mapped_file

    data = np.random.default_rng(13).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    (tmp_path / "f").write_bytes(data)
    with mapped_file(tmp_path / "f") as mapped:
        assert isinstance(mapped, mmap_module.mmap)
        for offset in (0, 5, 70_000, (1 << 20) - 20_000):  # margin before 0 and past the end are clipped
            drop_pages(mapped, offset, 20_000)
            assert mapped[:] == data
    drop_pages(data, 0, len(data))  # not an mmap: nothing to do
