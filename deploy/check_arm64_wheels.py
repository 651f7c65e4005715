"""Does every edge dependency have a 64-bit ARM wheel? Asks pip, for Python 3.10 and 3.12.

    python3 deploy/check_arm64_wheels.py [--python-version 3.10 --python-version 3.12] [--keep DIR]

For each Python version it runs `pip download --only-binary=:all:` of the base dependencies
plus the `edge` extra (from pyproject.toml; transitive dependencies included) twice:

- `manylinux2014`: `--platform manylinux2014_aarch64` only (glibc 2.17 wheels);
- `glibc-2.35`: the platform tags a board with glibc 2.35 accepts (manylinux2014 and
  manylinux_2_17 ... manylinux_2_35): Ubuntu 22.04, which JetPack 6 and the usual RK3588
  images are built on; Debian 12 (the slim Python images) has 2.36.

It prints one line per check and the wheels it found, or every requirement (or dependency of
one) that has no wheel for those tags. The exit status is 0 when every `glibc-2.35` check passes (what the boards need),
1 otherwise. It needs network access to the package index; nothing is installed.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]
BOARD_GLIBC_MINOR = 35
PLATFORM_SETS = {
    "manylinux2014": ["manylinux2014_aarch64"],
    f"glibc-2.{BOARD_GLIBC_MINOR}": ["manylinux2014_aarch64"]
    + [f"manylinux_2_{minor}_aarch64" for minor in range(17, BOARD_GLIBC_MINOR + 1)],
}


def edge_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The base dependencies and the edge extra, without environment markers (all of the edge
    extra's markers hold on Linux)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"]) + list(project["optional-dependencies"]["edge"])
    return [r.split(";")[0].strip() for r in requirements]


def download(requirements: list[str], python_version: str, platforms: list[str], dest: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--only-binary=:all:",
               "--python-version", python_version, "--implementation", "cp", "-d", str(dest)]
    for platform in platforms:
        command += ["--platform", platform]
    return subprocess.run(command + requirements, capture_output=True, text=True)


def missing_requirement(output: str) -> str:
    match = re.search(r"No matching distribution found for (\S+)", output)
    return match[1] if match else output.strip().splitlines()[-1] if output.strip() else "unknown error"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", action="append", dest="python_versions",
                        help="Python version to check (repeatable; default 3.10 and 3.12)")
    parser.add_argument("--keep", type=Path, help="download into this folder and keep the wheels")
    args = parser.parse_args(argv)
    versions = args.python_versions or ["3.10", "3.12"]
    requirements = edge_requirements()
    print("requirements:", " ".join(requirements))
    board_ok = True
    with tempfile.TemporaryDirectory(prefix="arm64-wheels-") as scratch:
        for version in versions:
            for name, platforms in PLATFORM_SETS.items():
                dest = (args.keep or Path(scratch)) / f"py{version}-{name}"
                dest.mkdir(parents=True, exist_ok=True)
                result = download(requirements, version, platforms, dest)
                if result.returncode == 0:
                    wheels = sorted(p.name for p in dest.glob("*.whl"))
                    print(f"PASS  python {version}  {name:14s} {len(wheels)} wheels")
                    for wheel in wheels:
                        print(f"        {wheel}")
                else:
                    # pip stops at the first miss: ask once per requirement to name every one
                    missing = []
                    for requirement in requirements:
                        alone = download([requirement], version, platforms, dest)
                        if alone.returncode != 0:
                            missing.append(missing_requirement(alone.stdout + alone.stderr))
                    print(f"FAIL  python {version}  {name:14s} no aarch64 wheel for: {', '.join(missing)}")
                    board_ok = board_ok and not name.startswith("glibc")
    return 0 if board_ok else 1


if __name__ == "__main__":
    sys.exit(main())
