"""The placement replay through the real in-process extender (extender.Extender) on recorded
windows (experiment/results/tuning/: a run of the real agent), with the replay's virtual clock:
the extender's schema, TTL and sequence rules apply. No kernel needed."""

import json
import random
from pathlib import Path

import pytest
import yaml

from experiment import analysis, replay, run
from experiment.replay import ExtenderScorer, Node, OracleScorer, manifest_weight, place, replayed_body

RECORDED = Path(__file__).resolve().parents[2] / "experiment" / "results" / "tuning"


@pytest.fixture(scope="module")
def recorded():
    reports, reqs, phases, pings = run.load_raw(RECORDED)
    rows = analysis.join_windows(reports, reqs, phases, pings)
    return reports, reqs, rows


def _by_score(reports, lo, hi):
    return next(r for r in reports if r["node_score"] is not None and lo <= r["node_score"] < hi)


def test_default_scorer_is_the_real_extender_with_its_default_policy():
    s = replay.default_scorer()
    assert isinstance(s, ExtenderScorer)
    assert s.policy == "node-score" and "extender.Extender" in s.name and "node-score" in s.name


def test_extender_scores_a_replayed_report_and_goes_neutral_after_its_ttl(recorded):
    reports = recorded[0]
    good = _by_score(reports, 88, 95)
    bad = _by_score(reports, 40, 75)
    s = ExtenderScorer()
    s.receive(replayed_body(good, "n1", 1, 100.0), {}, 100.0)
    want = round(good["node_score"] / 10)
    assert s.prioritize({}, ["n1", "unknown"], 100.0) == {"n1": want, "unknown": 5.0}
    # the same sequence again (a worse score) is stale and changes nothing
    s.receive(replayed_body(bad, "n1", 1, 101.0), {}, 101.0)
    assert s.prioritize({}, ["n1"], 101.0)["n1"] == want
    assert s.answers == {"accepted": 1, "stale": 1} and s.rejected == []
    # TTL = 3 x push_interval_seconds after it was received (virtual time): fresh just before
    ttl = 3 * float(good["push_interval_seconds"])
    assert s.prioritize({}, ["n1"], 100.0 + ttl - 0.01)["n1"] == want
    assert s.prioritize({}, ["n1"], 100.0 + ttl)["n1"] == 5.0
    # a newer sequence makes it fresh again, with that report's score
    s.receive(replayed_body(bad, "n1", 2, 200.0), {}, 200.0)
    assert s.prioritize({}, ["n1"], 200.0)["n1"] == round(bad["node_score"] / 10)


def test_a_report_the_extender_refuses_is_recorded_not_scored(recorded):
    s = ExtenderScorer()
    doc = dict(recorded[0][5])
    del doc["node_score"]  # required by the schema
    s.receive(json.dumps(doc).encode(), {}, 10.0)
    assert len(s.rejected) == 1 and s.rejected[0][0] == 400 and "node_score" in s.rejected[0][1]["error"]
    assert s.prioritize({}, [doc["node_name"]], 10.0) == {doc["node_name"]: 5.0}


class SpyScorer(ExtenderScorer):
    def __init__(self):
        super().__init__()
        self.seen = []

    def prioritize(self, pod, nodes, now):
        out = super().prioritize(pod, nodes, now)
        self.seen.append((now, dict(out)))
        return out


def test_in_the_replay_a_node_whose_reports_stop_goes_neutral(recorded):
    reports = recorded[0]
    good, bad = _by_score(reports, 88, 95), _by_score(reports, 40, 75)
    g, b = round(good["node_score"] / 10), round(bad["node_score"] / 10)
    # the healthy node's agent stops after its first push (step 0); capacity is large enough
    # that neither node fills up while we watch
    nodes = [Node("healthy-0", "baseline", 100, [good], silent_from=1),
             Node("sick-0", "S4", 100, [bad])]
    spy = SpyScorer()
    place(nodes, 6, spy, 2.0, 3.0, 1000.0, random.Random(1))
    by_time = {now: out for now, out in spy.seen}
    assert by_time[1000.0] == {"healthy-0": g, "sick-0": b}
    assert by_time[1003.0]["healthy-0"] == g and by_time[1006.0]["healthy-0"] == g
    # 9 s (3 x the 3 s push interval) after its last push: neutral; the pushing node keeps its score
    assert by_time[1009.0] == {"healthy-0": 5.0, "sick-0": b}
    assert by_time[1015.0]["healthy-0"] == 5.0
    assert spy.answers["accepted"] == 1 + 6 and spy.rejected == []


def test_replay_run_through_the_real_extender_on_recorded_windows(recorded):
    reports, reqs, rows = recorded
    out = replay.replay_run(reports, rows, requests=reqs, weight=2.0, trials=1)
    assert "extender.Extender" in out["scorer"] and out["policy"] == "node-score"
    assert "not a live cluster" in out["note"] and out["profile"] == "default"
    # every recorded window on its own: the extender's HostPriority is the node score / 10, rounded
    for rep in reports:
        want = 5.0 if rep["node_score"] is None else float(int(rep["node_score"] / 10 + 0.5))
        assert out["window_scores"][rep["sequence"]] == want
    mixes = {m["mix"]: m for m in out["mixes"]}
    assert set(mixes) == {"baseline+S1", "baseline+S2", "baseline+S3", "baseline+S4", "baseline+S5", "all"}
    for m in mixes.values():
        assert m["pushes"].get("accepted", 0) > 0 and "rejected" not in m["pushes"]
        for mode in ("baseline", "extender", "oracle"):
            assert m[mode]["p99_ms"] > 0 and sum(m[mode]["mean_pods_per_scenario"].values()) == m["pods"]
    # the extender's default weight in the manifests prefers the healthy nodes in the big mix
    allm = mixes["all"]
    assert allm["extender"]["mean_pods_per_scenario"]["baseline"] > allm["baseline"]["mean_pods_per_scenario"]["baseline"]


def test_oracle_fills_the_best_measured_nodes_first():
    o = OracleScorer({"a": 10.0, "b": 200.0, "c": 50.0})
    sc = o.prioritize({}, ["a", "b", "c"], 0.0)
    assert sc["a"] > sc["c"] > sc["b"] == 0.0


def test_manifest_weight_is_read_from_the_scheduler_configuration(tmp_path):
    doc = yaml.safe_load(replay.SCHEDULER_CONFIG.read_text())
    assert manifest_weight() == float(doc["extenders"][0]["weight"])
    p = tmp_path / "k.yaml"
    p.write_text(yaml.safe_dump({"extenders": [{"urlPrefix": "x", "prioritizeVerb": "prioritize", "weight": 7}]}))
    assert manifest_weight(p) == 7.0
    p.write_text(yaml.safe_dump({"extenders": [{"urlPrefix": "x", "filterVerb": "filter"}]}))
    with pytest.raises(ValueError, match="prioritizeVerb"):
        manifest_weight(p)


def test_experiment_defaults_to_the_manifest_weight_then_1_and_5():
    a = run.parse_args([])
    assert a.weights[0] == manifest_weight() and set(a.weights) >= {1.0, 5.0}
    assert len(a.weights) == len(set(a.weights))
    assert run.parse_args(["--extender-weights", "3"]).weights == [3.0]
    with pytest.raises(SystemExit):
        run.parse_args(["--extender-weights", "0"])
    with pytest.raises(SystemExit):
        run.parse_args(["--profiles", "default,nonesuch"])
