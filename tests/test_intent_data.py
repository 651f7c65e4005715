"""`edgecascade data synth|holdout`: generated and held-out intent data sets."""

from __future__ import annotations

import pytest

from edgecascade.cli import main as cli_main
from edgecascade.offline.holdout_intents import choose_intents
from edgecascade.offline.synthetic_intents import OUT_OF_SCOPE_LABEL, generate
from edgecascade.offline.text_data import read_labelled_csv
from shared.errors import InvalidInputError


def test_synthetic_data_is_deterministic_and_shaped(tmp_path, capsys):
    train, test = generate(intents=4, train_per_intent=10, test_per_intent=5, out_of_scope=7, seed=3)
    assert (train, test) == generate(intents=4, train_per_intent=10, test_per_intent=5, out_of_scope=7, seed=3)
    assert train != generate(intents=4, train_per_intent=10, test_per_intent=5, seed=4)[0]
    assert len(train) == 40 and len(test) == 27
    assert sum(label == OUT_OF_SCOPE_LABEL for _, label in test) == 7
    assert OUT_OF_SCOPE_LABEL not in {label for _, label in train} and len({label for _, label in train}) == 4
    assert cli_main(["data", "synth", "--out", str(tmp_path / "s"), "--intents", "3", "--out-of-scope", "5"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out and "SYNTHETIC" in (tmp_path / "s/README.md").read_text()
    data = read_labelled_csv(tmp_path / "s/test.csv")
    assert len(data) == 3 * 20 + 5
    with pytest.raises(InvalidInputError, match="intents must be between 2"):
        generate(intents=1)


def test_holdout_moves_intents_out_of_training(tmp_path, capsys):
    source = tmp_path / "src"
    assert cli_main(["data", "synth", "--out", str(source), "--intents", "6"]) == 0
    out = tmp_path / "src-holdout2"
    assert cli_main(["data", "holdout", "--data-dir", str(source), "--intents", "2", "--seed", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 intents in scope, 2 held out" in printed
    train, test = read_labelled_csv(out / "train.csv"), read_labelled_csv(out / "test.csv")
    source_test = read_labelled_csv(source / "test.csv")
    held = sorted(set(read_labelled_csv(source / "train.csv").labels) - set(train.labels))
    assert len(held) == 2 and held == choose_intents(read_labelled_csv(source / "train.csv").labels, count=2, seed=1)
    assert test.texts == source_test.texts
    assert [OUT_OF_SCOPE_LABEL if label in held else label for label in source_test.labels] == test.labels
    assert ", ".join(held) in (out / "README.md").read_text()
    assert cli_main(["data", "holdout", "--data-dir", str(source), "--labels", "nope", "--out", str(tmp_path / "x")]) == 2
    assert "unknown intents ['nope']" in capsys.readouterr().err
    assert cli_main(["data", "holdout", "--data-dir", str(source), "--intents", "5", "--out", str(tmp_path / "y")]) == 2
    assert "at least 2 must stay" in capsys.readouterr().err


def test_port_range_is_parsed_and_honoured(monkeypatch):
    from edgecascade import processes
    from shared.errors import ConfigError, UnavailableError

    for bad in ("20000", "a-b", "30000-20000", "80-90", "20000-70000"):
        with pytest.raises(ConfigError, match="port range"):
            processes.parse_port_range(bad)
    import socket

    low = processes.free_port()
    monkeypatch.setattr(processes, "_handed_out", set())
    processes.set_port_range(f"{low}-{min(low + 50, 65535)}")
    try:
        ports = [processes.free_port() for _ in range(3)]
        assert len(set(ports)) == 3 and all(low <= p <= low + 50 for p in ports)
        with socket.socket() as held:  # the only port of the range is taken
            held.bind(("127.0.0.1", 0))
            taken = held.getsockname()[1]
            processes.set_port_range((taken, taken))
            with pytest.raises(UnavailableError, match=f"no free port left in the range {taken}-{taken}"):
                processes.free_port()
    finally:
        processes.set_port_range(None)
    monkeypatch.setenv(processes.PORT_RANGE_ENV, "oops")
    with pytest.raises(ConfigError, match="'oops' is not LO-HI"):
        processes.free_port()


def test_demo_refuses_a_bad_port_range(capsys):
    assert cli_main(["demo", "--port-range", "9-1"]) == 2
    assert "port range '9-1'" in capsys.readouterr().err
