"""Per-tensor encode/decode: every method round-trips, across block boundaries, and refuses junk."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shared.delta import tensor_diff
from shared.errors import CorruptPatchError


def encode(kind, itemsize, old, new):
    out = io.BytesIO()
    method = tensor_diff.encode_into(out, kind, itemsize, None if old is None else memoryview(old), memoryview(new))
    return method, out.getvalue()


def decode(method, itemsize, old, blob, length):
    return tensor_diff.decode(method, itemsize, None if old is None else memoryview(old), blob, length)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_tensors_spanning_several_blocks_round_trip(dtype):
    rng = np.random.default_rng(0)
    count = (2 * tensor_diff.BLOCK_BYTES + 1000) // np.dtype(dtype).itemsize  # a short last block
    old = rng.standard_normal(count).astype(dtype)
    new = (old * (1 + 1e-3 * rng.standard_normal(count))).astype(dtype)
    method, blob = encode("float", old.itemsize, old.tobytes(), new.tobytes())
    assert method == "xor_zstd"
    assert len(blob) < 0.8 * new.nbytes
    assert decode(method, old.itemsize, old.tobytes(), blob, new.nbytes) == new.tobytes()


def test_int8_tensor_spanning_several_blocks_round_trips():
    rng = np.random.default_rng(1)
    old = rng.integers(-128, 128, size=tensor_diff.BLOCK_BYTES * 2 + 17, dtype=np.int8)
    new = (old + rng.integers(-1, 2, size=old.size)).astype(np.int8)
    method, blob = encode("int8", 1, old.tobytes(), new.tobytes())
    assert method == "sub_zstd"
    assert decode(method, 1, old.tobytes(), blob, new.nbytes) == new.tobytes()


def test_resized_and_new_tensors_round_trip():
    rng = np.random.default_rng(2)
    old = rng.standard_normal(1000).astype(np.float32).tobytes()
    grown = old + rng.standard_normal(10).astype(np.float32).tobytes()
    method, blob = encode("float", 4, old, grown)
    assert method == "bsdiff4"
    assert decode(method, 4, old, blob, len(grown)) == grown
    method, blob = encode("float", 4, None, grown)
    assert method == "zstd"
    assert decode(method, 4, None, blob, len(grown)) == grown


def test_unrelated_data_is_sent_as_plain_zstd():
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, 300_000, dtype=np.uint8).tobytes()
    new = bytes(300_000)  # all zeros: the raw bytes compress far better than any delta
    method, blob = encode("int8", 1, old, new)
    assert method == "zstd"
    assert decode(method, 1, old, blob, len(new)) == new


@pytest.mark.parametrize(
    "method, blob, length, match",
    [
        ("zstd", b"not zstd", 10, "not a zstd frame"),
        ("zstd", tensor_diff.zstd_compress(b"x" * 100), 99, "more than"),
        ("zstd", tensor_diff.zstd_compress(b"x" * 100), 101, "holds 100 bytes"),
        ("zstd", tensor_diff.zstd_compress(bytes(range(256)) * 64)[:-9], 256 * 64, "zstd"),
        ("sub_zstd", tensor_diff.zstd_compress(b"x" * 100), 100, "base"),
        ("bsdiff4", b"BSDIFF40" + b"\0" * 10, 100, "bsdiff4"),
        ("nonsense", b"", 4, "unknown tensor method"),
    ],
)
def test_bad_blobs_are_corrupt_patch(method, blob, length, match):
    base = None if method == "sub_zstd" else b"\0" * length
    with pytest.raises(CorruptPatchError, match=match):
        decode(method, 1, base, blob, length)


def test_xor_with_a_base_of_the_wrong_size_is_corrupt_patch():
    blob = tensor_diff.zstd_compress(b"\0" * 64)
    with pytest.raises(CorruptPatchError, match="base of 64"):
        decode("xor_zstd", 4, b"\0" * 32, blob, 64)


def test_xor_planes_in_pieces_equal_the_whole_block_planes():
    from shared.delta.tensor_diff import STREAM_BYTES, _planes, _xor_planes

    rng = np.random.default_rng(3)
    for itemsize in (2, 4, 8):
        old = rng.integers(0, 256, 3 * STREAM_BYTES, dtype=np.uint8)
        new = rng.integers(0, 256, 3 * STREAM_BYTES, dtype=np.uint8)
        pieces = b"".join(p.tobytes() for p in _xor_planes(old, new, itemsize))
        assert pieces == _planes(np.bitwise_xor(old, new), itemsize).tobytes()


def test_encoder_window_is_capped():
    import io

    import zstandard

    from shared.delta.tensor_diff import WINDOW_LOG, zstd_compress, zstd_compress_into

    data = np.random.default_rng(4).integers(0, 8, 3 << 20, dtype=np.uint8).tobytes()
    out = io.BytesIO()
    zstd_compress_into(out, data)
    for frame in (out.getvalue(), zstd_compress(data)):
        assert zstandard.get_frame_parameters(frame).window_size <= 1 << WINDOW_LOG
        assert zstandard.ZstdDecompressor().decompress(frame, max_output_size=len(data)) == data


def test_difference_frames_use_the_small_delta_window():
    import zstandard

    rng = np.random.default_rng(5)
    old = rng.integers(-128, 128, 3 << 20, dtype=np.int8)
    new = (old + rng.integers(-1, 2, old.size)).astype(np.int8)
    for kind, itemsize in (("int8", 1), ("float", 4)):
        method, blob = encode(kind, itemsize, old.tobytes(), new.tobytes())
        assert method in ("sub_zstd", "xor_zstd")
        assert zstandard.get_frame_parameters(blob).window_size <= 1 << tensor_diff.DELTA_WINDOW_LOG
        assert decode(method, itemsize, old.tobytes(), blob, new.nbytes) == new.tobytes()


def test_blobs_made_with_the_earlier_zstd_settings_still_decode():
    """Payloads published before the level-1 delta frames (level 3, 256 KiB window, one
    compressor call per 256 KiB piece) apply unchanged: the decoder reads any window."""
    import zstandard

    rng = np.random.default_rng(6)
    old = rng.integers(-128, 128, tensor_diff.BLOCK_BYTES + 5000, dtype=np.int8)
    new = (old + rng.integers(-2, 3, old.size)).astype(np.int8)
    params = zstandard.ZstdCompressionParameters.from_level(3, source_size=new.nbytes, window_log=18)
    stream = zstandard.ZstdCompressor(compression_params=params).compressobj(size=new.nbytes)
    diff = np.subtract(new.view(np.uint8), old.view(np.uint8))
    blob = b"".join(stream.compress(diff[i : i + (256 << 10)]) for i in range(0, diff.size, 256 << 10)) + stream.flush()
    assert decode("sub_zstd", 1, old.tobytes(), blob, new.nbytes) == new.tobytes()
