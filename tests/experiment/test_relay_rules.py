"""The relay's release-time rule, without devices: FIFO under jitter, delay range, loss share."""

import random

import pytest

from experiment.relay import Direction, HoldStats, Shape


def test_release_never_reorders_and_stays_within_the_drawn_range():
    d = Direction(random.Random(7), Shape(20, 5))
    now, last = 0.0, 0.0
    holds = []
    for i in range(5000):
        now += random.Random(i).expovariate(200)  # ~200 packets/s
        t = d.admit(now)
        assert t >= last  # FIFO
        last = t
        holds.append((t - now) * 1000)
    assert min(holds) >= 15 - 1e-9
    # a packet only waits beyond its own draw for the one ahead of it: never beyond 25 ms
    assert max(holds) <= 25 + 1e-9


def test_isolated_packets_see_the_drawn_delay_uniformly():
    d = Direction(random.Random(3), Shape(20, 5))
    holds = sorted((d.admit(i * 1.0) - i * 1.0) * 1000 for i in range(4000))
    assert 19.5 <= holds[len(holds) // 2] <= 20.5
    assert 15.0 <= holds[0] and holds[-1] <= 25.0
    assert 15.8 <= holds[len(holds) // 10] <= 16.2  # uniform: p10 = 16 ms


def test_loss_share():
    d = Direction(random.Random(5), Shape(0, 0, 0.02))
    dropped = sum(d.admit(float(i)) is None for i in range(20000))
    assert 300 <= dropped <= 500


def test_zero_shape_is_a_wire():
    d = Direction(random.Random(1))
    assert d.admit(5.0) == 5.0


@pytest.mark.parametrize("bad", [dict(delay_ms=-1), dict(loss=1.5), dict(delay_ms=2, jitter_ms=3)])
def test_invalid_shapes_are_refused(bad):
    with pytest.raises(ValueError):
        Shape(**bad)
    with pytest.raises(ValueError):
        Shape.from_dict({"delay": 3})


def test_hold_stats_summary():
    s = HoldStats()
    assert s.summary() == {"packets": 0, "dropped": 0, "held": 0}
    s.holds.extend(float(i) for i in range(1, 101))
    h = s.summary()["hold_ms"]
    assert h["p50"] == 51 and h["max"] == 100 and h["mean"] == 50.5
