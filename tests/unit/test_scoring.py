import math

import pytest

from agent.stats.histogram import SlotLayout
from agent.stats.scoring import (count_above, dominant_share, jain_index, node_score, normalize,
                                 weighted_drop_rate)

L = SlotLayout(5, 21)


def test_dominant_share_takes_the_larger_share():
    assert dominant_share(1.0, 4.0, 6e9, 8e9) == 0.75
    assert dominant_share(3.0, 4.0, 1e9, 8e9) == 0.75
    assert dominant_share(1.0, 4.0, None, 8e9) == 0.25  # memory unavailable
    assert dominant_share(None, None, None, None) is None
    assert dominant_share(9.0, 4.0, 0, 8e9) == 1.0  # clamped


def test_jain_by_hand():
    assert jain_index([]) == 1.0
    assert jain_index([0.3]) == 1.0
    assert jain_index([0.2, 0.2, 0.2]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)
    # (0.1+0.3)^2 / (2*(0.01+0.09)) = 0.16/0.2
    assert jain_index([0.1, 0.3]) == pytest.approx(0.8)
    assert jain_index([0, 0]) == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        jain_index([0.1, -0.2])


def test_count_above_interpolates_inside_the_threshold_slot():
    s = L.slot_of(100_000)
    lo, hi = L.bounds(s)
    counts = {L.slot_of(10): 5, s: 10, L.slot_of(500_000): 3}
    mid = (lo + hi) / 2
    assert count_above(L, counts, mid) == pytest.approx(3 + 5)
    assert count_above(L, counts, 1) == pytest.approx(18)
    assert count_above(L, counts, 10**9) == 0


def test_normalize_clamps_and_keeps_none():
    assert normalize(5, 0, 10) == 0.5
    assert normalize(-1, 0, 10) == 0.0
    assert normalize(50, 0, 10) == 1.0
    assert normalize(None, 0, 10) is None
    with pytest.raises(ValueError, match="lo < hi"):
        normalize(1, 5, 5)


W = {"rtt_p99": 0.3, "retrans_rate": 0.2, "drop_rate": 0.2, "runqlat_p95": 0.15, "cpu_util": 0.15}


def test_score_by_hand():
    n = {"rtt_p99": 0.5, "retrans_rate": 0.0, "drop_rate": 1.0, "runqlat_p95": 0.2, "cpu_util": 0.4}
    # badness = .15 + 0 + .2 + .03 + .06 = .44
    assert node_score(n, W) == pytest.approx(56.0)
    assert node_score({k: 0.0 for k in W}, W) == 100.0
    assert node_score({k: 1.0 for k in W}, W) == 0.0


def test_score_leaves_out_unavailable_signals_and_rescales():
    n = {"rtt_p99": 1.0, "retrans_rate": None, "drop_rate": None, "runqlat_p95": None, "cpu_util": 0.0}
    # only rtt (0.3) and cpu (0.15): badness = 0.3/0.45
    assert node_score(n, W) == pytest.approx(100 * (1 - 0.3 / 0.45), abs=1e-3)
    assert node_score({k: None for k in W}, W) is None


def test_weighted_drop_rate():
    assert weighted_drop_rate({"NO_SOCKET": 10, "QDISC_DROP": 2, "X": 1},
                              {"NO_SOCKET": 0.0, "QDISC_DROP": 1.0}, 0.5) == pytest.approx(2.5)
