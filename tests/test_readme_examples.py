"""Every ```python block in README.md runs, as written, against the daemons `edgecascade demo
--serve` starts (here on free ports: the README's 127.0.0.1:50051 and :50061 are swapped for
them). A block that cannot run here must say so in an HTML comment just before it:
`<!-- not run by tests: REASON -->`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from edgecascade.processes import free_port

README = Path(__file__).resolve().parents[1] / "README.md"
NOT_RUN = re.compile(r"<!--\s*not run by tests:\s*(?P<reason>[^>]*?)\s*-->\s*$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class CodeBlock:
    line: int        # 1-based line of the opening fence
    lang: str
    code: str
    not_run_reason: str | None


def code_blocks(markdown: str) -> list[CodeBlock]:
    """Fenced blocks in order; `not_run_reason` from a marker on the last non-blank line before."""
    lines = markdown.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        opening = FENCE.match(lines[i])
        if not opening:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"README line {i + 1}: code block never closed"
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.search(before)
        blocks.append(CodeBlock(i + 1, opening["lang"], "\n".join(lines[i + 1:end]) + "\n",
                                marker["reason"] if marker else None))
        i = end + 1
    return blocks


def python_blocks() -> list[CodeBlock]:
    return [b for b in code_blocks(README.read_text()) if b.lang == "python"]


def test_the_block_parser_sees_markers():
    sample = "text\n\n```python\nprint(1)\n```\n<!-- not run by tests: needs a GPU -->\n\n```python\nx\n```\n```bash\nls\n```\n"
    first, second, third = code_blocks(sample)
    assert (first.lang, first.code, first.not_run_reason) == ("python", "print(1)\n", None)
    assert second.not_run_reason == "needs a GPU" and second.line == 8
    assert third.lang == "bash"


def test_every_python_block_that_is_not_run_says_why():
    blocks = python_blocks()
    assert len([b for b in blocks if b.not_run_reason is None]) >= 2, "the SDK and KServe examples must run"
    for block in blocks:
        if block.not_run_reason is not None:
            assert len(block.not_run_reason) >= 10, f"README line {block.line}: say why the block cannot run"


@pytest.fixture(scope="module")
def demo_served(tmp_path_factory, demo_cache):
    """`edgecascade demo --serve` on free ports; (router target, agent target, env)."""
    from shared.delta.signing import keygen

    work = tmp_path_factory.mktemp("readme-serve")
    router, agent = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {**os.environ, "EDGECASCADE_CACHE_DIR": str(demo_cache)}
    keygen(work / "update_key.pem", work / "update_key.pub.pem")
    log = open(work / "serve.log", "w+")
    process = subprocess.Popen([sys.executable, "-m", "edgecascade.cli", "demo", "--serve", "--out", str(work),
                                "--router-listen", router, "--agent-listen", agent,
                                "--update-key", str(work / "update_key.pub.pem")],
                               stdout=log, stderr=subprocess.STDOUT, env=env, text=True)
    try:
        deadline = time.monotonic() + 600  # the first use builds the demo pair
        while "Ctrl-C stops both" not in (work / "serve.log").read_text():
            assert process.poll() is None, (work / "serve.log").read_text()
            assert time.monotonic() < deadline, "demo --serve did not come up"
            time.sleep(0.2)
        yield router, agent, env, work
    finally:
        process.terminate()
        process.wait(60)
        log.close()
    assert process.returncode == 0, (work / "serve.log").read_text()
    assert "stopped" in (work / "serve.log").read_text()


@pytest.mark.parametrize("block", [b for b in python_blocks() if b.not_run_reason is None],
                         ids=lambda b: f"README-line-{b.line}")
def test_readme_python_block_runs(block, demo_served, tmp_path):
    router, agent, env, _ = demo_served
    code = block.code.replace("127.0.0.1:50051", router).replace("127.0.0.1:50061", agent)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                          cwd=tmp_path)
    assert done.returncode == 0, f"README line {block.line}:\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), f"README line {block.line} printed nothing"


def test_the_documented_v2_reaches_the_demo_agent(demo_served, tmp_path):
    """README, "Model updates": `demo --make-v2` and the `update push` command it prints."""
    from edgecascade.update_client import rollout_status

    router, agent, env, work = demo_served
    made = subprocess.run([sys.executable, "-m", "edgecascade.cli", "demo", "--make-v2", str(tmp_path / "demo-v2")],
                          capture_output=True, text=True, timeout=300, env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    (push,) = [line.strip() for line in made.stdout.splitlines() if line.strip().startswith("edgecascade update push")]
    args = push.split()[1:]
    args[args.index("--key") + 1] = str(work / "update_key.pem")
    args[args.index("--router") + 1] = router
    pushed = subprocess.run([sys.executable, "-m", "edgecascade.cli", *args, "--wait-s", "120"], capture_output=True,
                            text=True, timeout=300, env=env)
    assert pushed.returncode == 0 and "rollout done" in pushed.stdout, pushed.stdout + pushed.stderr[-3000:]
    (record,) = rollout_status(router).agents
    assert (record.agent_id, record.active_version, record.state) == ("demo-edge", 2, "healthy")
