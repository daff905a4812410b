"""connect: TCP connection set-up latency and failures per local address, from
sock:inet_sock_set_state.

Active opens: SYN_SENT -> ESTABLISHED latency (a histogram per local address) and
SYN_SENT -> CLOSE failures (refused, timed out, or aborted by the client before the handshake
completed) per local address; passive opens: SYN_RECV -> ESTABLISHED per local address.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from agent import loads
from agent.model import Histogram, ProbeSnapshot, merge_histograms
from agent.probes.base import BccProbe, render_addr
from agent.probes.bpfmaps import Maps
from agent.probes.spec import (Context, Field, Figures, HistSpec, MapSpec, ProbeSpec, Series,
                               Signal, Smoke, by_owner, merged, quantile_seconds)
from agent.stats.histogram import SlotLayout

HIST = HistSpec(
    unit="us", unit_seconds=1e-6,
    value_bits=27,  # up to 2**27 us (134 s): above the ~127 s a SYN with 6 retries takes to fail
    metric="ebpf_tcp_connect_seconds",
    help="TCP active open latency (connect: SYN_SENT to ESTABLISHED), all local addresses",
    export_lo=1 << 6, export_hi=1 << 24)  # 64 us .. 16.8 s (beyond: +Inf), series budget

# the snapshot's counts are keyed "<kind>/<local address>"
FAILED = "failed"
PASSIVE = "passive"


def count_key(kind: str, addr: str) -> str:
    return f"{kind}/{addr}"


def split_counts(counts: Mapping[str, int]) -> dict[str, dict[str, int]]:
    """{"failed/10.0.0.5": 3, ...} -> {"failed": {"10.0.0.5": 3}, "passive": {...}}."""
    out: dict[str, dict[str, int]] = {FAILED: {}, PASSIVE: {}}
    for key, n in counts.items():
        kind, _, addr = key.partition("/")
        if kind in out and addr:
            out[kind][addr] = out[kind].get(addr, 0) + n
    return out


def failure_rate(failed: int, established: int) -> float | None:
    """Failed active opens / all completed active opens; None without any."""
    n = failed + established
    return None if n == 0 else failed / n


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    """Node and per-pod figures: latency quantiles and counts in the window, cumulative counts
    for the Prometheus counters. Established opens are the latency histogram's samples (an
    open that began before the probe attached has none and is not counted)."""
    owner = ctx.address_owner()
    wc, cc = split_counts(win.counts), split_counts(cum.counts)
    node = merged(win.hists)
    established = node.count if node else 0
    failed = sum(wc[FAILED].values())
    pod_hist = {uid: merge_histograms(hs) for uid, hs in by_owner(win.hists, owner).items()}
    pod_failed = {uid: sum(ns) for uid, ns in by_owner(wc[FAILED], owner).items()}
    pod_passive = {uid: sum(ns) for uid, ns in by_owner(wc[PASSIVE], owner).items()}
    pods: dict[str, dict] = {}
    for p in ctx.pods:
        if p.host_network:
            continue  # the host's connections: never guessed to be the pod's
        h = pod_hist.get(p.uid)
        est = h.count if h else 0
        f = {"connects": est, "connect_failures": pod_failed.get(p.uid, 0),
             "passive_opens": pod_passive.get(p.uid, 0),
             "connect_p50": quantile_seconds(h, 0.5, HIST),
             "connect_p99": quantile_seconds(h, 0.99, HIST),
             "connect_failure_rate": failure_rate(pod_failed.get(p.uid, 0), est)}
        if p.addresses:
            f["connect_failures_total"] = sum(cc[FAILED].get(a, 0) for a in p.addresses)
            f["passive_opens_total"] = sum(cc[PASSIVE].get(a, 0) for a in p.addresses)
        pods[p.uid] = f
    return Figures(
        node={"connect_p50": quantile_seconds(node, 0.5, HIST),
              "connect_p99": quantile_seconds(node, 0.99, HIST),
              "connects": established,
              "connect_failures": failed,
              "passive_opens": sum(wc[PASSIVE].values()),
              "connect_failure_rate": failure_rate(failed, established),
              "connect_hist_total": merged(cum.hists),
              "connect_failures_total": sum(cc[FAILED].values()),
              "passive_opens_total": sum(cc[PASSIVE].values())},
        pods=pods)


SPEC = ProbeSpec(
    name="connect",
    source="connect.bpf.c",
    summary="TCP connect latency, failed active opens and passive opens per local address",
    tracepoints=("sock:inet_sock_set_state",),
    fields={"sock:inet_sock_set_state": ("skaddr", "oldstate", "newstate", "protocol",
                                         "saddr_v6")},
    # connect_start: {skaddr, start time} entries chosen by a hash of skaddr (bpf/connect.bpf.c)
    maps=(MapSpec("connect_start", 4, 16, lambda c: c.max_addresses * 16, define="CONNECT_PENDING"),
          MapSpec("connect_lat", 20, 16, lambda c: c.max_addresses * 64,
                  define="CONNECT_LAT_ENTRIES"),
          MapSpec("connect_counts", 16, 16, lambda c: c.max_addresses, define="CONNECT_MAX_ADDRS"),
          MapSpec("lost_events", 4, 8, lambda c: 1)),
    hist=HIST,
    attribution="address",
    summarize=summarize,
    # a share of failed active opens; weight 0 unless configured
    signals=(Signal("connect_failure_rate", "connect_failure_rate", bounds=(0.0, 0.25)),),
    series=(
        Series(HIST.metric, HIST.help, "connect_hist_total", kind="histogram"),
        Series("ebpf_tcp_connect_p50_seconds", "TCP connect latency p50 over the last window",
               "connect_p50"),
        Series("ebpf_tcp_connect_p99_seconds", "TCP connect latency p99 over the last window",
               "connect_p99"),
        Series("ebpf_tcp_connect_failures",
               "TCP active opens closed before being established (SYN_SENT to CLOSE: refused, "
               "timed out, or aborted by the client)", "connect_failures_total", kind="counter"),
        Series("ebpf_tcp_connect_failure_ratio",
               "Share of the window's completed TCP active opens that failed (refused, timed "
               "out, or aborted by the client)", "connect_failure_rate"),
        Series("ebpf_tcp_passive_opens",
               "TCP passive opens established (SYN_RECV to ESTABLISHED)", "passive_opens_total",
               kind="counter"),
        Series("ebpf_pod_tcp_connect_p99_seconds", "Pod's TCP connect latency p99 over the last "
               "window", "connect_p99", per_pod=True),
        Series("ebpf_pod_tcp_connect_failures",
               "TCP active opens from the pod's addresses closed before being established "
               "(refused, timed out, or aborted by the client)", "connect_failures_total",
               kind="counter", per_pod=True),
        # per-pod passive opens are in the report and the push, not in /metrics (series budget)
    ),
    payload=(
        Field("connect_p50_ms", "connect_p50", 1000.0),
        Field("connect_p99_ms", "connect_p99", 1000.0),
        Field("connects", "connects", digits=None),
        Field("connect_failures", "connect_failures", digits=None),
        Field("passive_opens", "passive_opens", digits=None),
        Field("connect_failure_rate", "connect_failure_rate"),
    ),
    pod_payload=(
        Field("connects", "connects", digits=None),
        Field("connect_failures", "connect_failures", digits=None),
        Field("passive_opens", "passive_opens", digits=None),
        Field("connect_p99_ms", "connect_p99", 1000.0),
        Field("connect_failure_rate", "connect_failure_rate"),
    ),
    availability="connect",
    smoke=Smoke(load=loads.connect_attempts, show="percentiles",
                passive="shows connects wherever the node opens TCP connections; failures and "
                        "passive opens may be zero on a quiet node"),
    lost_map="lost_events",
)


def decode(layout: SlotLayout, lat: Iterable[tuple[str, int, int, int]],
           tallies: Iterable[tuple[str, int, int]], lost: int, taken_at: float) -> ProbeSnapshot:
    """The maps' raw contents -> snapshot (pure).

    ``lat``: (address, slot, count, sum of us) of connect_lat; ``tallies``: (address, failed,
    passive) of connect_counts. Latency histograms are keyed by address, the counts by
    ``count_key(kind, address)``; zero counts are left out."""
    counts: dict[str, dict[int, int]] = {}
    totals: dict[str, int] = {}
    for addr, slot, n, total in lat:
        if n:
            slots = counts.setdefault(addr, {})
            slots[slot] = slots.get(slot, 0) + n
            totals[addr] = totals.get(addr, 0) + total
    tally: dict[str, int] = {}
    for addr, failed, passive in tallies:
        for kind, n in ((FAILED, failed), (PASSIVE, passive)):
            if n:
                k = count_key(kind, addr)
                tally[k] = tally.get(k, 0) + n
    return ProbeSnapshot(SPEC.name, HIST.unit, taken_at,
                         hists={a: Histogram(layout, c, totals[a]) for a, c in counts.items()},
                         counts=tally, lost=lost)


class ConnectProbe(BccProbe):
    spec = SPEC

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        lat = [(render_addr(a), slot, n, total)
               for (a, slot), (n, total) in maps.items("connect_lat", "16sI", "QQ")]
        tallies = [(render_addr(a), failed, passive)
                   for a, (failed, passive) in maps.items("connect_counts", "16s", "QQ")]
        return decode(self.layout, lat, tallies, self.lost(maps), time.monotonic())
