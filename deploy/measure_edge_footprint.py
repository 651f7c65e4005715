"""What an edge install costs a board: disk of `pip install .[edge]` and the agent's memory.

    python3 deploy/measure_edge_footprint.py --python /usr/bin/python3.10 \
        [--requests 2000] [--out benchmarks/results/edge_footprint.json]

1. Makes a fresh venv with `--python`, measures it, runs `pip install --no-cache-dir
   REPO[edge]` (not editable) and measures it again: the difference is the installed size.
   Fails if torch or a CUDA package (nvidia-*, triton) was installed.
2. Starts that venv's `edgecascade edge run` on the demo's edge model (the default model,
   built under a temporary folder by this interpreter, which needs the dev install), edge-only (cloud_target null), and reads the agent's resident memory (VmRSS, peak VmHWM,
   and PSS from /proc/PID/smaps_rollup) once it serves and again after `--requests` Infer
   calls through the SDK.
Writes the figures as JSON and prints them. Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN = re.compile(r"^(torch|torchvision|triton|nvidia-[a-z0-9-]+|tensorflow)$", re.IGNORECASE)


def tree_kib(path: Path) -> int:
    """Disk use of `path` in KiB (allocated blocks, like du -sk)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            file = Path(root) / name
            if not file.is_symlink():
                total += file.stat().st_blocks * 512
    return total // 1024


def status_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    rollup = Path(f"/proc/{pid}/smaps_rollup")
    if rollup.exists():
        for line in rollup.read_text().splitlines():
            if line.startswith("Pss:"):
                values["Pss"] = int(line.split()[1])
    return {f"{k.lower()}_kib": v for k, v in values.items()}


def install(python: str, venv: Path) -> dict:
    subprocess.run([python, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    empty_kib = tree_kib(venv)
    subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "-q", "--no-cache-dir",
                    "--disable-pip-version-check", f"{REPO}[edge]"], check=True)
    installed_kib = tree_kib(venv)
    freeze = subprocess.run([str(bin_dir / "python"), "-m", "pip", "list", "--format=json"],
                            check=True, capture_output=True, text=True).stdout
    packages = {p["name"]: p["version"] for p in json.loads(freeze)}
    forbidden = sorted(name for name in packages if FORBIDDEN.match(name))
    if forbidden:
        raise SystemExit(f"the edge install pulled {forbidden}")
    site = next(venv.glob("lib/python*/site-packages"))
    largest = sorted(((tree_kib(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)[:6]
    version = subprocess.run([str(bin_dir / "python"), "-c", "import platform; print(platform.python_version())"],
                             check=True, capture_output=True, text=True).stdout.strip()
    return {"python": version, "empty_venv_kib": empty_kib, "venv_with_edge_kib": installed_kib,
            "edge_install_kib": installed_kib - empty_kib, "packages": packages,
            "largest_kib": {name: kib for kib, name in largest}}


def demo_bundle(work: Path) -> tuple[Path, np.ndarray]:
    from edgecascade.offline.demo_models import ensure_demo_models

    models = ensure_demo_models(work / "demo")
    with np.load(models.root / "test.npz") as data:
        inputs = data["X"]
    return models.root / "edge", inputs


def measure_agent(venv: Path, bundle: Path, inputs: np.ndarray, requests: int, work: Path) -> dict:
    from edgecascade import Client
    from edgecascade.processes import free_port, wait_serving

    port = free_port()
    config = work / "edge.yaml"
    # Loopback only, edge-only: plaintext is explicit, as the daemons require since TLS became the default.
    config.write_text(yaml.safe_dump({"listen": f"127.0.0.1:{port}", "bundle_dir": str(bundle), "cloud_target": None,
                                      "plaintext": True}))
    log = open(work / "edge.log", "wb")
    process = subprocess.Popen([str(venv / "bin" / "edgecascade"), "edge", "run", "--config", str(config)],
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_serving(f"127.0.0.1:{port}", 120, process)
        time.sleep(1.0)
        serving = status_kib(process.pid)
        routes: dict[str, int] = {}
        with Client(f"127.0.0.1:{port}") as client:
            for i in range(requests):
                result = client.infer(inputs[i % len(inputs)])
                routes[result.served_by] = routes.get(result.served_by, 0) + 1
        after = status_kib(process.pid)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()
    return {"serving": serving, f"after_{requests}_requests": after, "routes": routes,
            "child_processes": len(children), "bundle": str(bundle),
            "bundle_kib": tree_kib(bundle)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter for the fresh venv (a board's Python)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "edge_footprint.json")
    args = parser.parse_args(argv)
    if not shutil.which(args.python) and not Path(args.python).exists():
        raise SystemExit(f"no interpreter {args.python}")
    with tempfile.TemporaryDirectory(prefix="edge-footprint-") as scratch:
        work = Path(scratch)
        bundle, inputs = demo_bundle(work)
        install_figures = install(args.python, work / "venv")
        memory = measure_agent(work / "venv", bundle, inputs, args.requests, work)
    result = {"what": "pip install .[edge] in a fresh venv; edge agent serving the demo edge model, edge-only",
              "machine": {"arch": platform.machine(), "system": platform.platform()},
              "install": install_figures, "agent_memory": memory}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result["install"].items() if k != "packages"}, indent=2))
    print(json.dumps(memory, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
