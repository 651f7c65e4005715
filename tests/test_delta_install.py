"""Atomic install: old-or-new under concurrent reads and a killed installer; previous version kept."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from shared.delta.install import (
    atomic_write_bytes,
    install_file,
    previous_path,
    remove_stale_temps,
    restore_previous,
)
from shared.errors import ConfigError

SIZE = 1 << 20
OLD, NEW = b"A" * SIZE, b"B" * SIZE


def test_install_keeps_the_previous_version_and_can_restore_it(tmp_path):
    dest = tmp_path / "model.onnx"
    atomic_write_bytes(dest, b"v1")
    assert not previous_path(dest).exists()
    new = tmp_path / ".model.onnx.incoming"
    new.write_bytes(b"v2")
    kept = install_file(new, dest)
    assert kept == previous_path(dest)
    assert dest.read_bytes() == b"v2" and kept.read_bytes() == b"v1"
    assert not new.exists()
    restore_previous(dest)
    assert dest.read_bytes() == b"v1" and previous_path(dest).read_bytes() == b"v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.prev"]


def test_restore_without_a_previous_version_is_refused(tmp_path):
    dest = tmp_path / "model.onnx"
    atomic_write_bytes(dest, b"v1")
    with pytest.raises(ConfigError, match="no previous version"):
        restore_previous(dest)
    assert dest.read_bytes() == b"v1"


def test_install_from_another_directory_stages_next_to_dest(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    src = tmp_path / "a" / "new.onnx"
    src.write_bytes(b"v2")
    dest = tmp_path / "b" / "model.onnx"
    dest.write_bytes(b"v1")
    install_file(src, dest)
    assert dest.read_bytes() == b"v2" and previous_path(dest).read_bytes() == b"v1"
    assert not src.exists()


_INSTALLER = textwrap.dedent(
    """
    import itertools, sys
    from shared.delta.install import atomic_write_bytes
    dest, size = sys.argv[1], int(sys.argv[2])
    versions = (b"A" * size, b"B" * size)
    print("ready", flush=True)
    for i in itertools.count():
        atomic_write_bytes(dest, versions[i % 2], keep_previous=True)
    """
)


def test_killed_installer_leaves_old_or_new_and_readers_never_see_a_mix(tmp_path):
    dest = tmp_path / "model.onnx"
    atomic_write_bytes(dest, OLD)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    rng = random.Random(7)
    for _ in range(4):
        child = subprocess.Popen([sys.executable, "-c", _INSTALLER, str(dest), str(SIZE)], stdout=subprocess.PIPE, env=env)
        assert child.stdout.readline().strip() == b"ready"
        stop, seen, bad = threading.Event(), [0], []

        def read_loop() -> None:
            while not stop.is_set():
                data = dest.read_bytes()
                seen[0] += 1
                if data not in (OLD, NEW):
                    bad.append((len(data), data[:1], data[-1:]))

        reader = threading.Thread(target=read_loop)
        reader.start()
        time.sleep(rng.uniform(0.05, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        stop.set()
        reader.join()
        child.stdout.close()
        assert not bad, f"reader saw partial files: {bad[:3]}"
        assert seen[0] > 0
        assert dest.read_bytes() in (OLD, NEW)
        assert previous_path(dest).read_bytes() in (OLD, NEW)
        remove_stale_temps(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.prev"]
