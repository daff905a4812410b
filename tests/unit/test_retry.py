"""The one backoff and the one log rate-limiter every retrying or warning part uses."""

import logging
import math

import pytest

from agent.retry import Backoff, RateLimitedLog, backoff_delay


def test_backoff_doubles_to_the_cap_and_resets():
    b = Backoff(30.0, 600.0)
    assert [b.next() for _ in range(7)] == [30, 60, 120, 240, 480, 600, 600]
    assert b.peek == 600
    b.reset()
    assert b.next() == 30


def test_backoff_jitter_stays_within_half_to_full_delay():
    assert backoff_delay(3, 1.0, 60.0, lambda: 0.0) == 4.0
    assert backoff_delay(3, 1.0, 60.0, lambda: 1.0) == 8.0
    assert backoff_delay(3, 1.0, 60.0, None) == 8.0
    assert backoff_delay(10_000, 1.0, 60.0, None) == 60.0  # no overflow for a long outage
    with pytest.raises(ValueError, match="initial"):
        Backoff(5.0, 1.0)


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_rate_limited_log_counts_what_it_suppressed(caplog):
    clock = Clock()
    rl = RateLimitedLog(60.0, logging.getLogger("t"), clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        assert rl.warn("a", "reader %s failed", "a")
        assert not rl.warn("a", "reader %s failed", "a")
        assert rl.warn("b", "reader %s failed", "b")  # keys are independent
        clock.t = 61.0
        assert rl.warn("a", "reader %s failed", "a")
    assert [r.getMessage() for r in caplog.records] == [
        "reader a failed", "reader b failed", "reader a failed (1 more like this suppressed)"]


def test_once_per_key_until_cleared(caplog):
    clock = Clock()
    rl = RateLimitedLog(math.inf, logging.getLogger("t"), clock)
    with caplog.at_level(logging.WARNING, logger="t"):
        rl.warn("u", "cannot resolve %s", "x")
        clock.t = 1e9
        rl.warn("u", "cannot resolve %s", "x")
        rl.clear("u")
        rl.warn("u", "cannot resolve %s", "x")
    assert [r.getMessage() for r in caplog.records] == ["cannot resolve x", "cannot resolve x"]


def test_a_message_with_a_percent_sign_is_logged_as_is(caplog):
    rl = RateLimitedLog(60.0, logging.getLogger("t"), Clock())
    with caplog.at_level(logging.WARNING, logger="t"):
        rl.warn("f", "%s", "cgroup: skipping garbled /x/100%/cpu.stat")
    assert caplog.records[0].getMessage() == "cgroup: skipping garbled /x/100%/cpu.stat"
