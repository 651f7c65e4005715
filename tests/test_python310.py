"""The edge side runs on Python 3.10: JetPack 6 (Jetson Orin) and the usual RK3588 Ubuntu 22.04
images ship it. The cloud router may need 3.11+. .ci/run also runs the edge tests under 3.10
when an interpreter is there (tests/python310_subset.txt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[1]
#: What `pip install .[edge]` runs on a board: the agent, the SDK, the CLI and what they import.
EDGE_SIDE = ["edge_agent", "shared", "protos", "edgecascade"]
#: Offline model building runs where the cloud extra is installed.
NOT_EDGE_SIDE = r"edgecascade/offline/"


def test_requires_python_admits_3_10():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "3.10" in SpecifierSet(project["requires-python"])


def test_edge_side_code_needs_nothing_newer_than_python_3_10():
    vermin = shutil.which("vermin") or shutil.which("vermin", path=str(Path(sys.executable).parent))
    if vermin is None:
        if os.environ.get("CI"):
            pytest.fail("vermin missing in CI: the dev extra installs it")
        pytest.skip("vermin not installed (pip install vermin; the dev extra has it)")
    result = subprocess.run([vermin, "--no-tips", "--violations", "--target=3.10-", "--eval-annotations",
                             "--exclude-regex", NOT_EDGE_SIDE, *EDGE_SIDE],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_python310_subset_names_test_files_that_exist():
    names = [line.strip() for line in (REPO / "tests" / "python310_subset.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert names
    for name in names:
        assert (REPO / name).is_file(), name
