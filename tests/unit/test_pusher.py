"""The pusher against a misbehaving extender on loopback (no kernel needed)."""

import logging
import time

import pytest

from agent.export.extender import Pusher
from tests.extender_stub import ExtenderStub


@pytest.fixture
def ext():
    e = ExtenderStub()
    yield e
    e.close()


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return False


def make(ext, **kw):
    p = Pusher(ext.url, kw.pop("timeout", 0.5), backoff_first=0.05, backoff_max=0.2, **kw)
    p.start()
    return p


def test_delivers_payload_to_metrics_report(ext):
    p = make(ext)
    try:
        p.offer({"sequence": 1, "node_name": "n"})
        assert wait_for(lambda: ext.received)
        assert ext.received[0] == {"sequence": 1, "node_name": "n"}
        # the stub has the body before the pusher has read the answer: wait for that too
        assert wait_for(lambda: p.delivered == 1)
        assert p.last_delivered_sequence == 1 and not p.pending
    finally:
        p.stop()


@pytest.mark.parametrize("mode,cause", [("error", "http_5xx"), ("garbage", "invalid_response"),
                                        ("hang", "timeout"), ("down", "connection")])
def test_failure_causes_are_classified(ext, mode, cause):
    if mode == "down":
        ext.down()
    ext.mode = mode
    p = make(ext, timeout=0.3)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures[cause] >= 1), p.failures
        assert p.pending  # still waiting for delivery
    finally:
        p.stop()


def test_latest_wins_and_first_delivery_after_recovery_is_the_newest(ext):
    ext.down()
    p = make(ext)
    try:
        for seq in range(1, 51):
            p.offer({"sequence": seq})
            time.sleep(0.005)
        assert p.replaced >= 45  # older undelivered reports were replaced, not queued
        ext.up()
        assert wait_for(lambda: ext.received, timeout=5)
        time.sleep(0.3)
        assert [r["sequence"] for r in ext.received] == [50]
    finally:
        p.stop()


def test_bearer_token_is_reread_from_file(ext, tmp_path):
    tok = tmp_path / "token"
    tok.write_text("first\n")
    p = make(ext, token_file=str(tok))
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: len(ext.headers) == 1)
        tok.write_text("second")
        p.offer({"sequence": 2})
        assert wait_for(lambda: len(ext.headers) == 2)
        assert [h["authorization"] for h in ext.headers] == ["Bearer first", "Bearer second"]
    finally:
        p.stop()


def test_unreadable_token_is_a_counted_failure(ext, tmp_path):
    p = make(ext, token_file=str(tmp_path / "missing"))
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures["token"] >= 1)
        assert not ext.received
    finally:
        p.stop()


def test_stop_is_prompt_even_while_a_push_hangs(ext):
    ext.mode = "hang"
    p = make(ext, timeout=5)
    p.offer({"sequence": 1})
    time.sleep(0.2)
    t0 = time.monotonic()
    p.stop(timeout=1.0)
    assert time.monotonic() - t0 < 1.5


def test_a_push_in_flight_at_stop_fails_without_a_warning(ext, caplog):
    """The request a stop() left behind times out later: counted, but no "push failed"
    warning from an agent that is shutting down (it used to log after the process's streams
    were closed)."""
    ext.mode = "hang"
    p = make(ext, timeout=0.5)
    p.offer({"sequence": 1})
    assert wait_for(lambda: p.attempts == 1)
    p.stop(timeout=0.05)
    p._thread.join(5)
    assert not p._thread.is_alive() and p.failures["timeout"] == 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_metrics_family(ext):
    ext.mode = "error"
    p = make(ext)
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: p.failures["http_5xx"] >= 1)
        names = {m.name for m in p.metrics()}
        assert {"ebpf_push_attempts", "ebpf_push_failures", "ebpf_push_pending",
                "ebpf_push_delivered", "ebpf_push_replaced"} <= names
    finally:
        p.stop()


def test_push_interval_cadence_sends_only_the_newest(ext):
    p = make(ext)
    p.interval = 0.6
    try:
        p.offer({"sequence": 1})
        assert wait_for(lambda: len(ext.received) == 1)
        t_first = time.monotonic()
        for seq in (2, 3, 4):
            p.offer({"sequence": seq})
        time.sleep(0.3)
        assert len(ext.received) == 1  # not before the interval
        assert wait_for(lambda: len(ext.received) == 2, timeout=3)
        assert time.monotonic() - t_first >= 0.55
        assert ext.received[1]["sequence"] == 4 and p.replaced == 0  # no failure: not "replaced"
    finally:
        p.stop()


def test_an_unexpected_error_is_counted_and_the_thread_lives_on(ext):
    p = make(ext)
    try:
        p.offer({"sequence": 1, "bad": {1, 2}})  # a set: not JSON-serialisable
        assert wait_for(lambda: p.failures["other"] >= 1)
        p.offer({"sequence": 2})
        assert wait_for(lambda: ext.received)
        assert ext.received[0]["sequence"] == 2
    finally:
        p.stop()
