"""`edgecascade fleet status`'s table: one line per agent, every route counted (out-of-scope
answers in ABSTAIN), fallback reasons beside the fallback count."""

from __future__ import annotations

from edgecascade.commands.fleet import COLUMNS, format_table


def test_each_route_has_its_column_and_abstentions_are_counted():
    row = {"last_seen_unix_s": 100.0, "agent": {
        "agent_id": "board-7", "model_name": "intents", "model_version": "3", "policy_signal": "max_prob",
        "threshold": 0.8, "breaker_state": "closed", "cloud_pressure": 0.25,
        "route_counts": {"edge": "40", "cloud": "7", "edge_fallback": "2", "abstain": "5"},
        "fallback_counts": {"pressure": "2"}}}
    header, line = format_table([row], now_s=101.5).splitlines()
    assert header.split() == list(COLUMNS)
    starts = [header.index(name) for name in COLUMNS] + [len(line)]
    cells = {name: line[a:b].strip() for name, a, b in zip(COLUMNS, starts, starts[1:])}
    assert (cells["MODEL"], cells["EDGE"], cells["CLOUD"], cells["ABSTAIN"]) == ("intents v3", "40", "7", "5")
    assert cells["FALLBACK"] == "2 (pressure:2)" and cells["SEEN"] == "1.5s ago"


def test_no_agents_says_so():
    assert format_table([]).splitlines()[-1] == "(no live agents)"
