"""`edgecascade demo` end to end: real models, real daemons, the JSON it promises; and clean-up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np


def _env(cache):
    return {**os.environ, "EDGECASCADE_CACHE_DIR": str(cache)}


def test_demo_writes_json_and_png_and_beats_edge_only(tmp_path, demo_cache):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "edgecascade.cli", "demo", "--out", str(out), "--no-progress"],
                          capture_output=True, text=True, timeout=600, env=_env(demo_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "demo.json").read_text())
    for key in ("edge_only_accuracy", "cloud_only_accuracy", "cascade_accuracy", "deferral_rate", "routes", "latency_ms"):
        assert key in summary
    assert summary["cascade_accuracy"] > summary["edge_only_accuracy"]
    assert sum(summary["routes"].values()) == summary["n"]            # every query answered exactly once
    # a healthy cloud: fallbacks are rare (a loaded machine can push a cloud answer past its
    # deadline, and that query is then answered at the edge, as it should be)
    assert summary["routes"]["edge_fallback"] <= summary["n"] // 100
    assert 0 < summary["deferral_rate"] < 1
    # live cascade through the daemons agrees with the offline computation
    assert abs(summary["cascade_accuracy"] - summary["offline_cascade_accuracy"]) < 1e-9
    assert set(summary["latency_ms"]["edge"]) == {"p50", "p99"}
    assert (out / "deferral_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "cascade accuracy" in proc.stdout
    # it says where the bundles are and how to serve them and make a version 2
    assert f"{demo_cache / 'demo-v1' / 'edge'} (edge)" in proc.stdout
    assert "edgecascade demo --serve" in proc.stdout and "edgecascade demo --make-v2" in proc.stdout


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()
            if "edgecascade.cli" in line and ("edge run" in line or "cloud run" in line) and int(line.split()[1]) == pid]


def test_demo_cleans_up_on_ctrl_c(tmp_path, demo_cache):
    proc = subprocess.Popen([sys.executable, "-m", "edgecascade.cli", "demo", "--out", str(tmp_path / "o"), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(demo_cache))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _children(proc.pid):   # interrupt as soon as a daemon is up
        time.sleep(0.05)
    children = _children(proc.pid)
    assert children, "demo did not start its daemons"
    proc.send_signal(signal.SIGINT)
    proc.wait(60)
    assert proc.returncode in (0, 130)   # 0 only if the whole demo finished before the signal landed
    time.sleep(0.5)
    alive = [pid for pid in children if os.path.exists(f"/proc/{pid}") and "zombie" not in open(f"/proc/{pid}/status").read().lower()]
    assert alive == [], f"daemons left running: {alive}"
    # nothing the demo started later survives either (orphans would be re-parented, so look by config path)
    ps = subprocess.run(["ps", "-e", "-o", "args="], capture_output=True, text=True).stdout
    assert not [line for line in ps.splitlines() if "edgecascade-demo-" in line and " run --config" in line]


def test_make_v2_writes_a_loadable_second_version_with_a_small_real_delta(tmp_path, demo_cache):
    from edgecascade.offline.demo_models import ensure_demo_models
    from edgecascade.update_package import package_from_bundles
    from shared.delta.signing import keygen, load_private_key
    from shared.model_card import load_card
    from shared.model_loader import load_model
    from shared.policy import load_policy

    proc = subprocess.run([sys.executable, "-m", "edgecascade.cli", "demo", "--make-v2", str(tmp_path / "v2")],
                          capture_output=True, text=True, timeout=600, env=_env(demo_cache))
    assert proc.returncode == 0, proc.stderr[-3000:]
    pair = ensure_demo_models(demo_cache)
    assert f"--model {tmp_path / 'v2'} --base {pair.edge_dir}" in proc.stdout
    v1, v2 = load_model(pair.edge_dir, edge=True), load_model(tmp_path / "v2", edge=True)
    assert load_card(tmp_path / "v2").version == 2
    load_policy(tmp_path / "v2" / "policy.json").check_matches(v2.card)
    v1.load()
    v2.load()
    inputs = list(pair.test_inputs[:200])
    before, after = v1.predict(inputs), v2.predict(inputs)
    assert not np.array_equal(before, after)
    agreement = (before.argmax(1) == after.argmax(1)).mean()
    assert agreement > 0.9, agreement  # the same digits classifier, nudged
    keygen(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    package = package_from_bundles(tmp_path / "v2", pair.edge_dir, load_private_key(tmp_path / "k.pem"))
    assert package.manifest.version == 2 and len(package.payload) < (tmp_path / "v2" / "model.onnx").stat().st_size
    again = subprocess.run([sys.executable, "-m", "edgecascade.cli", "demo", "--make-v2", str(tmp_path / "v2")],
                           capture_output=True, text=True, timeout=600, env=_env(demo_cache))
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
