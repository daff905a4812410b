"""Score profiles: offline re-scoring reproduces the agent's own score; profiles load through
the agent's configuration loader; the search never does worse than the defaults it starts from."""

from pathlib import Path

import pytest

from agent.config import ScoreConfig, load_config
from experiment import run, tuning
from experiment.tuning import Profile, rescore, score_of

RECORDED = Path(__file__).resolve().parents[2] / "experiment" / "results" / "tuning"


def test_default_rescoring_reproduces_the_agents_score_on_recorded_reports():
    reports = run.load_raw(RECORDED)[0]
    prof = tuning.load_profile("default")
    assert len(reports) > 100
    for rep in reports:
        mine = score_of(rep, prof)
        assert mine == pytest.approx(rep["node_score"], abs=0.01), rep["sequence"]
        assert rescore(rep, prof)["score_inputs"] == pytest.approx(rep["score_inputs"], abs=1e-5)


def _report(rtt, retrans=0.0, drops=0.0, runq=0.2, cpu=0.3, rtt_available=True):
    inputs = {"rtt_p99": 0.1 if rtt_available else None, "retrans_rate": 0.0, "drop_rate": 0.0,
              "runqlat_p95": 0.0, "cpu_util": 0.0}
    return {"rtt_p99_ms": rtt, "retrans_rate": retrans, "drop_rate_weighted": drops,
            "runqlat_p95_ms": runq, "cpu_utilization": cpu, "score_inputs": inputs, "node_score": 1.0}


def test_rescore_applies_the_profile_and_keeps_unavailable_signals_out():
    p = Profile("t", {"rtt_p99": 0.5, "retrans_rate": 0.5, "drop_rate": 0, "runqlat_p95": 0, "cpu_util": 0},
                {"rtt_p99": (0.0, 100.0), "retrans_rate": (0.0, 0.1), "drop_rate": (0, 1),
                 "runqlat_p95": (0, 1), "cpu_util": (0, 1)})
    doc = rescore(_report(50.0, retrans=0.1), p)
    assert doc["score_inputs"]["rtt_p99"] == 0.5 and doc["score_inputs"]["retrans_rate"] == 1.0
    assert doc["node_score"] == pytest.approx(100 * (1 - 0.75))
    # rtt unavailable in the agent's report: left out, the rest re-weighted (as the agent does)
    doc = rescore(_report(50.0, retrans=0.1, rtt_available=False), p)
    assert doc["score_inputs"]["rtt_p99"] is None and doc["node_score"] == 0.0


def test_profile_files_are_agent_configurations():
    names = tuning.profile_names()
    assert names[0] == "default" and {"tuned-bounds", "tuned"} <= set(names)
    for name in names[1:]:
        cfg = load_config(str(tuning.PROFILE_DIR / f"{name}.yaml"), env={})
        prof = tuning.load_profile(name)
        assert dict(cfg.score.weights) == prof.weights and sum(prof.weights.values()) == pytest.approx(1)
    # the seed's weights stay the default, and "tuned-bounds" keeps them
    assert tuning.load_profile("default").weights == dict(ScoreConfig().weights)
    assert tuning.load_profile("tuned-bounds").weights == dict(ScoreConfig().weights)
    with pytest.raises(ValueError, match="unknown score profile"):
        tuning.load_profile("nonesuch")


def test_tune_finds_bounds_and_weights_no_worse_than_the_defaults():
    # client p99 follows retransmits; every other signal is noise. The search must lean on
    # retransmits and give the noise the minimum weight.
    pairs = []
    for i in range(40):
        retrans = (i % 10) * 0.002
        noise = dict(rtt=5.0 + ((i * 7) % 13) * 10, drops=((i * 3) % 11) * 10.0,
                     runq=0.1 + (i * 5) % 7, cpu=0.5 + ((i * 3) % 11) / 20)
        pairs.append((_report(noise.pop("rtt"), retrans=retrans, **noise), 10.0 + 1000 * retrans))
    res = tuning.tune(pairs)
    assert res["tuned_bounds"]["rho"] <= res["default_rho"]
    assert res["tuned"]["rho"] <= res["tuned_bounds"]["rho"] and res["tuned"]["rho"] < -0.9
    w = res["tuned"]["weights"]
    assert sum(w.values()) == pytest.approx(1) and min(w.values()) >= 0.05
    assert w["retrans_rate"] == max(w.values()) >= 0.5
