"""The placement replay: its logic with a pure fake scorer, and the real in-process extender
(issue 18) driven by the replay's virtual clock on recorded windows (no kernel)."""

import json
import random

import pytest

from experiment.analysis import Request
from experiment.replay import (Mix, Node, default_mixes, least_allocated, place, replay_mix,
                               replay_run, replayed_body)


class FakeScorer:
    """Scores a node by a fixed table keyed on the scenario in its name; records what came in."""

    name = "fake"

    def __init__(self, table):
        self.table = table
        self.received = []

    def receive(self, body, headers, now):
        doc = json.loads(body)
        self.received.append((doc["node_name"], doc["sequence"], doc["timestamp"], now))

    def prioritize(self, pod, nodes, now):
        return {n: self.table[n.split("-")[0]] for n in nodes}


def _report(score, seq=1):
    return {"node_name": "experiment-node", "agent_instance": "abc", "sequence": seq,
            "timestamp": "2025-01-01T00:00:00Z", "push_interval_seconds": 3.0,
            "window_seconds": 3.0, "node_score": score}


def _nodes():
    return [Node("baseline-0", "baseline", 10, [_report(95)]),
            Node("s1-0", "S1", 10, [_report(60)]), Node("s1-1", "S1", 10, [_report(60)]),
            Node("s4-0", "S4", 10, [_report(20)])]


def test_baseline_spreads_by_free_allocatable():
    nodes = _nodes()
    placed = place(nodes, 8, None, 1.0, 3.0, 0.0, random.Random(1))
    assert sorted(n.pods for n in nodes) == [2, 2, 2, 2]
    assert len(placed) == 8 and least_allocated(nodes[0]) == 80.0


def test_extender_fills_the_best_nodes_first_and_ranks_the_degraded():
    nodes = _nodes()
    scorer = FakeScorer({"baseline": 10, "s1": 6, "s4": 1})
    placed = place(nodes, 20, scorer, 5.0, 3.0, 100.0, random.Random(1))
    by = {n.name: n.pods for n in nodes}
    # weight 5: the score difference (×50) outweighs LeastAllocated's, so the healthy node
    # fills up first, then the S1 nodes, and S4 gets nothing
    assert by["baseline-0"] == 10 and by["s4-0"] == 0 and by["s1-0"] + by["s1-1"] == 10
    # every step each node pushed its replayed report: own name, rising sequence, virtual time
    seqs = [s for n, s, _, _ in scorer.received if n == "s1-0"]
    assert seqs == sorted(seqs) and seqs[0] == 1
    assert {t for _, _, t, _ in scorer.received} and scorer.received[0][3] == 100.0


def test_place_refuses_more_pods_than_capacity():
    with pytest.raises(ValueError):
        place(_nodes(), 41, None, 1.0, 3.0, 0.0, random.Random(1))


def test_replayed_body_rewrites_identity_and_time():
    doc = json.loads(replayed_body(_report(50, seq=9), "s2-1", 4, 0.0))
    assert doc["node_name"] == "s2-1" and doc["sequence"] == 4
    assert doc["agent_instance"] == "replay-s2-1" and doc["timestamp"] == "1970-01-01T00:00:00.000Z"
    assert doc["node_score"] == 50


def test_replay_mix_lower_p99_when_scores_track_latency():
    windows = {"baseline": [_report(95)], "S1": [_report(60)]}
    pools = {"baseline": [Request(0, 5.0, True)] * 50,
             "S1": [Request(0, 30.0, True)] * 45 + [Request(0, 1000.0, False)] * 5}
    mix = Mix("baseline+S1", {"baseline": 1, "S1": 3})
    res = replay_mix(mix, windows, pools, lambda: FakeScorer({"baseline": 9.5, "s1": 6.0}),
                     weight=1.0, trials=5)
    assert res.pods == 10 + 15
    # weight 1: a 3.5-point score lead (×10 = 35) keeps the healthy node ahead until it is ~3.5 pods fuller
    ext, base = (r["mean_pods_per_scenario"]["baseline"] for r in (res.extender, res.baseline))
    assert base < ext <= 10 and ext >= base + 2
    assert res.extender["error_rate"] < res.baseline["error_rate"]
    assert res.extender["p99_change"] <= 0


def test_replay_run_uses_pure_windows_and_says_it_is_a_replay():
    reports = [dict(_report(90 if i < 4 else 40, seq=i), timestamp=f"2025-01-01T00:00:{3 * i:02d}Z")
               for i in range(1, 9)]
    rows = [{"sequence": i, "phase": "baseline" if i < 4 else "S2", "purity": 1.0 if i != 4 else 0.5,
             "t_start": 1735689600 + 3 * (i - 1), "t_end": 1735689600 + 3 * i} for i in range(1, 9)]
    reqs = [Request(1735689600 + 0.1 * k, 5.0 if k < 120 else 80.0, True) for k in range(240)]
    out = replay_run(reports, rows, requests=reqs, trials=2,
                     scorer_factory=lambda: FakeScorer({"experiment": 7.0, "baseline": 9, "s2": 4}))
    assert "not a live cluster" in out["note"] and out["scorer"] == "fake"
    assert [m["mix"] for m in out["mixes"]] == ["baseline+S2"]
    assert out["window_scores"][1] == 7.0
    # the impure window (purity 0.5) is not replayed: baseline has sequences 1..3 only
    assert out["mixes"][0]["nodes"] == {"baseline": 1, "S2": 3}
    assert [m.name for m in default_mixes(["S1", "S2"])] == ["baseline+S1", "baseline+S2", "all"]
