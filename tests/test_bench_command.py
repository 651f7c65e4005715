"""`edgecascade bench`'s output options: a --quick smoke run writes <name>_quick.json, never the
committed result of a full run, unless --out says otherwise; --help says so. (The serve smoke
run in test_bench_smoke.py checks the same through the command line.)"""

from __future__ import annotations

import pytest

from edgecascade.cli import build_parser
from edgecascade.commands.bench import RESULTS_DIR, result_path

#: The benchmarks whose --out names a JSON file and that have a --quick run.
QUICK = ("delta", "scale", "serve")


@pytest.mark.parametrize("bench", QUICK + ("soak", "llm"))
def test_a_full_run_writes_the_committed_result(bench):
    assert result_path(bench, quick=False, out=None) == RESULTS_DIR / f"{bench}.json"


@pytest.mark.parametrize("bench", QUICK)
def test_a_quick_run_writes_a_file_of_its_own(bench):
    quick = result_path(bench, quick=True, out=None)
    assert quick == RESULTS_DIR / f"{bench}_quick.json"
    assert quick != result_path(bench, quick=False, out=None)


@pytest.mark.parametrize("quick", (False, True))
def test_out_wins(tmp_path, quick):
    assert result_path("scale", quick=quick, out=tmp_path / "mine.json") == tmp_path / "mine.json"


@pytest.mark.parametrize("bench", QUICK + ("cascade",))
def test_help_names_the_quick_file(bench, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", bench, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    stem = "cascade_<name>" if bench == "cascade" else bench
    assert f"Writes {stem}_quick.json" in text


@pytest.mark.parametrize("bench", QUICK)
def test_the_parser_leaves_out_unset_so_quick_can_choose(bench):
    args = build_parser().parse_args(["bench", bench, "--quick"])
    assert (args.bench, args.quick, args.out) == (bench, True, None)
