"""The experiment's statistics: Spearman's ρ with ties, quantiles, the window join."""

import math
import random

import pytest

from experiment.analysis import (Phase, Request, client_stats, join_windows, label, parse_requests,
                                 quantile, ranks, spearman, summarize)


def test_ranks_average_ties():
    assert ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert ranks([5, 5, 5]) == [2, 2, 2]
    assert ranks([]) == []


def test_spearman_known_values():
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7])[0] == pytest.approx(0.8207826816681233)
    assert spearman([1, 2, 3], [3, 2, 1])[0] == pytest.approx(-1.0)
    # monotone but not linear: ρ is 1 where Pearson's r is not
    assert spearman([1, 2, 3, 4], [1, 10, 100, 1000])[0] == pytest.approx(1.0)
    # one swap in each half: 1 - 6·Σd²/(n(n²-1)) = 1 - 6·4/120
    x = [1, 2, 3, 4, 5]
    y = [2, 1, 4, 3, 5]
    assert spearman(x, y)[0] == pytest.approx(0.8)
    assert spearman([1, 1, 2, 3], [1, 2, 3, 4])[0] == pytest.approx(0.9486832980505138)


def test_spearman_skips_missing_and_refuses_degenerate_input():
    assert spearman([1, None, 3, 4], [1, 5, None, 2]) == (None, 2)
    assert spearman([1, 1, 1], [1, 2, 3]) == (None, 3)  # constant side: no correlation
    assert spearman([1, 2, 3, float("nan"), 4], [1, 2, 3, 9, 4]) == (pytest.approx(1.0), 4)
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def test_spearman_is_invariant_under_monotone_maps():
    rnd = random.Random(4)
    x = [rnd.random() for _ in range(50)]
    y = [a + rnd.gauss(0, 0.3) for a in x]
    r = spearman(x, y)[0]
    assert spearman([math.exp(a) for a in x], [b ** 3 for b in y])[0] == pytest.approx(r)


def test_quantile_interpolates_like_numpy():
    v = [1, 2, 3, 4]
    assert quantile(v, 0.5) == 2.5
    assert quantile(v, 0.99) == pytest.approx(3.97)
    assert quantile([7], 0.99) == 7
    assert quantile([], 0.5) is None


def test_client_stats_counts_errors_in_latency_and_rate():
    reqs = [Request(0.1 * i, 10.0, True) for i in range(99)] + [Request(9.9, 1000.0, False)]
    s = client_stats(reqs, 10.0)
    assert s["client_requests"] == 100 and s["client_errors"] == 1
    assert s["client_error_rate"] == 0.01 and s["client_rps"] == 9.9
    assert s["client_p50_ms"] == 10.0 and s["client_p99_ms"] > 10.0


def test_label_and_join():
    phases = [Phase("baseline", 0, 10), Phase("S5", 10, 30, ((10, 15), (20, 25)))]
    assert label(8, 11, phases) == ("baseline", pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert label(12, 15, phases)[0] == "S5"
    reqs = parse_requests(["1.0,5,1\n", "2.0,7,1", "12.5,900,0", ""])
    from datetime import datetime, timezone

    def ts(t):
        return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")
    reports = [{"timestamp": ts(3.0), "window_seconds": 3, "sequence": 1, "node_score": 90,
                "rtt_p99_ms": 1.0, "score_inputs": {"rtt_p99": 0.0}},
               {"timestamp": ts(13.0), "window_seconds": 3, "sequence": 2, "node_score": 40,
                "rtt_p99_ms": 30.0, "score_inputs": {"rtt_p99": 0.2}},
               {"timestamp": ts(100.0), "window_seconds": 3, "sequence": 3, "node_score": 1}]
    rows = join_windows(reports, reqs, phases, pings=[(2.5, 0.2), (12, 21.0)])
    assert [r["phase"] for r in rows] == ["baseline", "S5"]  # outside every phase: left out
    assert rows[0]["client_requests"] == 2 and rows[0]["client_p50_ms"] == 6.0
    assert rows[1]["client_errors"] == 1 and rows[1]["ping_ms_median"] == 21.0
    assert rows[1]["norm_rtt_p99"] == 0.2 and rows[1]["norm_cpu_util"] is None
    with pytest.raises(ValueError):
        parse_requests(["1.0;5;1"])


def test_summary_targets():
    rows = []
    for i in range(10):
        rows.append({"phase": "baseline", "purity": 1.0, "node_score": 90 + i % 3,
                     "client_p99_ms": 5 + i % 2, "client_p50_ms": 1, "client_error_rate": 0})
        rows.append({"phase": "S1", "purity": 1.0, "node_score": 60 + i % 3,
                     "client_p99_ms": 30 + i % 2, "client_p50_ms": 20, "client_error_rate": 0})
    for r in rows:
        r.update({"ping_ms_median": None, "rtt_p99_ms": r["client_p99_ms"]})
    s = summarize(rows)
    assert s["rho_score_p99"] < -0.6 and s["targets"]["rho_le_-0.6"]
    assert s["targets"]["every_scenario_mean_score_below_baseline"]
    assert s["phases"]["S1"]["mean_score"] == pytest.approx(60.9)
    assert s["rho_per_signal"]["rtt_p99_ms"]["rho"] == 1.0


def test_loadavg_samples_are_attached_per_window():
    from experiment.analysis import attach_load, parse_loadavg

    lines = ["100.5 1.50 1.20 0.90 3/200 999", "", "101.5 2.50 1.30 0.90 5/201 1000",
             "103.2 9.00 2.00 1.00 9/210 1001"]
    samples = parse_loadavg(lines)
    assert samples == [(100.5, 1.5, 3), (101.5, 2.5, 5), (103.2, 9.0, 9)]
    rows = [{"t_start": 100.0, "t_end": 103.0}, {"t_start": 103.0, "t_end": 106.0},
            {"t_start": 200.0, "t_end": 203.0}]
    attach_load(rows, samples)
    assert (rows[0]["load1"], rows[0]["runnable_mean"], rows[0]["runnable_max"]) == (2.0, 4.0, 5)
    assert rows[1]["load1"] == 9.0 and rows[2]["load1"] is None and rows[2]["runnable_max"] is None
    with pytest.raises(ValueError, match="bad loadavg line"):
        parse_loadavg(["100.0 x"])


def test_score_summary_per_column():
    from experiment.analysis import score_summary

    rows = [{"phase": "baseline", "purity": 1.0, "client_p99_ms": 10.0 + i, "s": 90.0 - i} for i in range(4)]
    rows += [{"phase": "S1", "purity": 1.0, "client_p99_ms": 50.0 + i, "s": 60.0 - i} for i in range(3)]
    rows += [{"phase": "S2", "purity": 0.5, "client_p99_ms": 30.0, "s": 95.0}]
    out = score_summary(rows, "s", min_purity=0.75)
    assert out["mean_score"]["baseline"] == 88.5 and out["mean_score"]["S1"] == 59.0
    assert out["mean_score"]["S2"] is None  # no window pure enough
    assert out["targets"]["scenario_below_baseline"] == {"S1": True, "S2": False}
    assert not out["targets"]["every_scenario_mean_score_below_baseline"]
    assert out["rho_score_p99"] < -0.6 and out["targets"]["rho_le_-0.6"]
