"""Window differencing of cumulative snapshots, and the probe guard (fake probes)."""

import pytest

from agent.model import Histogram, ProbeSnapshot, ProbeStateKind, merge_histograms, window
from agent.probes.base import ProbeUnsupported
from agent.sampler import ProbeSet
from tests.conftest import FakeProbe
from agent.smoke import ProbeResult, passed, render_table, summarize
from agent.stats.histogram import SlotLayout

L = SlotLayout(5, 21)


def snap(counts=None, hist=None, total=0, lost=0, t=0.0, probe="p"):
    hists = {"10.0.0.1": Histogram(L, hist, total)} if hist is not None else {}
    return ProbeSnapshot(probe, "us", t, hists, counts or {}, lost)


def test_window_is_difference_of_cumulative_snapshots():
    a = snap({"NO_SOCKET": 3}, {100: 5, 101: 1}, total=1000, lost=1)
    b = snap({"NO_SOCKET": 7, "QDISC_DROP": 2}, {100: 9, 101: 1, 140: 3}, total=2500, lost=4)
    w, reset = window(a, b)
    assert not reset
    assert w.counts == {"NO_SOCKET": 4, "QDISC_DROP": 2}
    assert w.hists["10.0.0.1"].counts == {100: 4, 140: 3}
    assert w.hists["10.0.0.1"].total == 1500
    assert w.lost == 3 and w.events == 4 + 2 + 7


def test_window_without_previous_is_everything():
    b = snap({"X": 1})
    assert window(None, b) == (b, False)


def test_window_counter_reset_returns_what_accumulated_since():
    a = snap({"NO_SOCKET": 300}, {100: 50}, total=9000)
    b = snap({"NO_SOCKET": 2}, {100: 1}, total=100)
    w, reset = window(a, b)
    assert reset and w == b and w.since is None


def test_window_histogram_reset_detected_by_sum_too():
    a = snap(hist={100: 5}, total=1000)
    b = snap(hist={100: 5, 120: 1}, total=10)
    assert window(a, b)[1] is True


def test_window_refuses_mixed_probes():
    with pytest.raises(ValueError, match="'a' and 'b'"):
        window(snap(probe="a"), snap(probe="b"))


def test_merge_histograms():
    h = merge_histograms([Histogram(L, {1: 2}, 2), Histogram(L, {1: 1, 5: 1}, 6)])
    assert h.counts == {1: 3, 5: 1} and h.total == 8
    assert merge_histograms([]) is None
    with pytest.raises(ValueError):
        merge_histograms([Histogram(L, {}, 0), Histogram(SlotLayout(5, 30), {}, 0)])


class Clock:
    t = 0.0

    def __call__(self):
        return self.t


def test_guard_keeps_failures_local_and_reports_reasons():
    good = FakeProbe("good")
    broken = FakeProbe("broken", start_exc=RuntimeError("Failed to compile: boom"))
    absent = FakeProbe("absent", start_exc=ProbeUnsupported("tracepoint skb:kfree_skb not found"))
    ps = ProbeSet([good, broken, absent], clock=Clock())
    st = ps.start_all()
    assert st["good"].state is ProbeStateKind.UP
    assert st["broken"].state is ProbeStateKind.DOWN and "boom" in st["broken"].reason
    assert st["absent"].state is ProbeStateKind.UNSUPPORTED and "kfree_skb" in st["absent"].reason
    w = ps.read_windows()
    assert set(w) == {"good"} and w["good"].counts == {"k": 5}
    assert ps.read_windows()["good"].counts == {"k": 5}  # a window, not the cumulative 10


def test_guard_retries_down_probe_with_backoff_but_never_unsupported_one():
    clock = Clock()
    broken = FakeProbe("broken", start_exc=RuntimeError("attach failed"))
    absent = FakeProbe("absent", start_exc=ProbeUnsupported("no tracepoint"))
    ps = ProbeSet([broken, absent], clock=clock, retry_first=10, retry_max=40)
    ps.start_all()
    ps.retry_due()
    assert broken.starts == 1  # backoff not expired
    clock.t = 10
    ps.retry_due()
    assert broken.starts == 2
    clock.t = 25  # next delay is 20 s from t=10
    ps.retry_due()
    assert broken.starts == 2
    clock.t = 30
    ps.retry_due()
    assert broken.starts == 3
    broken.start_exc = None
    clock.t = 200
    ps.retry_due()
    assert ps.states["broken"].state is ProbeStateKind.UP
    assert absent.starts == 1


def test_guard_takes_probe_down_when_read_raises_and_others_continue():
    good, flaky = FakeProbe("good"), FakeProbe("flaky")
    ps = ProbeSet([good, flaky], clock=Clock())
    ps.start_all()
    flaky.read_exc = OSError("map vanished")
    w = ps.read_windows()
    assert "good" in w and "flaky" not in w
    assert ps.states["flaky"].state is ProbeStateKind.DOWN
    assert "map vanished" in ps.states["flaky"].reason
    assert flaky.closed == 1


def test_smoke_verdict():
    ok = {"a": ProbeResult("up", 3), "b": ProbeResult("unsupported", 0, "no tracepoint")}
    assert passed(ok)
    assert not passed({**ok, "c": ProbeResult("up", 0)})
    assert not passed({**ok, "c": ProbeResult("down", 0, "compile error")})
    assert not passed({"b": ProbeResult("unsupported")})


def test_smoke_summary_percentiles_and_reasons():
    from agent.model import ProbeState

    states = {"tcp_rtt": ProbeState("tcp_rtt", ProbeStateKind.UP),
              "skb_drop": ProbeState("skb_drop", ProbeStateKind.UP),
              "runqlat": ProbeState("runqlat", ProbeStateKind.DOWN, "start failed: x")}
    wins = {"tcp_rtt": snap(hist={L.slot_of(1000): 10}, total=10_000, probe="tcp_rtt"),
            "skb_drop": ProbeSnapshot("skb_drop", "", 0, counts={"NO_SOCKET": 5, "QDISC_DROP": 1})}
    r = summarize(states, wins, {"tcp_rtt": 120.0})
    assert r["tcp_rtt"].events == 10 and 1000 <= r["tcp_rtt"].p50 < 1032
    assert r["skb_drop"].top_reasons == {"NO_SOCKET": 5, "QDISC_DROP": 1}
    assert r["runqlat"].state == "down" and r["runqlat"].reason == "start failed: x"
    table = render_table(r)
    assert "NO_SOCKET=5" in table and "start failed: x" in table and "120ns/event" in table
    assert r["runqlat"].as_dict() == {"state": "down", "events": 0, "reason": "start failed: x",
                                      "lost": 0}
