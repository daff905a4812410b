"""tcp_rtt: smoothed RTT (microseconds) per local address, from tcp:tcp_probe."""

from __future__ import annotations

import sys
import time
from array import array
from collections import defaultdict
from typing import Iterable, Mapping

from agent import loads
from agent.model import Histogram, ProbeSnapshot
from agent.probes.base import (ADDR_ROW_MAPS, BccProbe, ProbeUnsupported, address_row_params,
                               address_rows, render_addr)
from agent.probes.bpfmaps import Maps
from agent.probes.spec import (Context, Field, Figures, HistSpec, MapSpec, ProbeSpec, Series,
                               Signal, Smoke, by_owner, count_above_seconds, merged,
                               quantile_seconds)
from agent.model import merge_histograms
from agent.stats.histogram import SlotLayout

HIST = HistSpec(
    unit="us", unit_seconds=1e-6,
    value_bits=27,  # srtt up to 2**27 us (134 s, above TCP's 120 s RTO ceiling) gets its own slot
    metric="ebpf_tcp_rtt_seconds",
    help="TCP smoothed RTT (srtt) sampled on ACK processing, all local addresses",
    export_lo=1 << 2, export_hi=1 << 25)


def spill_entries(config) -> int:
    # spilled addresses (no free row): a few dozen slots each in practice; 64 is generous
    return config.max_addresses * 64


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    """Node and per-pod RTT figures; SLO shares against each pod's own SLO (the rest of the
    node's samples against the default SLO)."""
    owner = ctx.address_owner()
    node = merged(win.hists)
    pod_hist = {uid: merge_histograms(hs) for uid, hs in by_owner(win.hists, owner).items()}
    pods: dict[str, dict] = {}
    above_total = 0.0
    for p in ctx.pods:
        if p.host_network:
            continue  # the host's traffic: never guessed to be the pod's
        h = pod_hist.get(p.uid)
        f = {"rtt_samples": h.count if h else 0, "rtt_p50": None, "rtt_p99": None,
             "slo_violation_rate": None}
        if h is not None and h.count:
            above = count_above_seconds(h, p.rtt_slo_ms / 1000, HIST)
            above_total += above
            f.update(rtt_p50=quantile_seconds(h, 0.5, HIST), rtt_p99=quantile_seconds(h, 0.99, HIST),
                     slo_violation_rate=above / h.count)
        pods[p.uid] = f
    slo_rate = None
    if node is not None and node.count:
        rest = merge_histograms(h for a, h in win.hists.items() if a not in owner)
        if rest is not None:
            above_total += count_above_seconds(rest, ctx.default_rtt_slo_ms / 1000, HIST)
        slo_rate = above_total / node.count
    return Figures(
        node={"rtt_p50": quantile_seconds(node, 0.5, HIST),
              "rtt_p90": quantile_seconds(node, 0.9, HIST),
              "rtt_p99": quantile_seconds(node, 0.99, HIST),
              "rtt_samples": node.count if node else 0,
              "slo_violation_rate": slo_rate,
              "rtt_hist_total": merged(cum.hists)},
        pods=pods)


SPEC = ProbeSpec(
    name="tcp_rtt",
    source="tcp_rtt.bpf.c",
    summary="TCP smoothed RTT per local address, sampled on ACK processing",
    tracepoints=("tcp:tcp_probe",),
    fields={"tcp:tcp_probe": ("saddr", "srtt", "snd_nxt", "snd_una")},
    maps=(MapSpec("rtt_rows", 4, 8, lambda c: c.fast_addresses * HIST.layout(c.hist_sub_bits).slots),
          MapSpec("rtt_row_sum", 4, 8),
          MapSpec("rtt_hist", 20, 16, spill_entries, define="RTT_MAX_ENTRIES"),
          MapSpec("lost_events", 4, 8, lambda c: 1),
          *ADDR_ROW_MAPS),
    params=address_row_params,
    hist=HIST,
    attribution="address",
    summarize=summarize,
    signals=(Signal("rtt_p99", "rtt_p99", 1000.0),),  # bounds in ms
    series=(
        Series("ebpf_rtt_p50_milliseconds", "TCP smoothed RTT p50 over the last window (ms)",
               "rtt_p50", scale=1000.0),
        Series("ebpf_rtt_p90_seconds", "TCP smoothed RTT p90 over the last window", "rtt_p90"),
        Series("ebpf_rtt_p99_milliseconds", "TCP smoothed RTT p99 over the last window (ms)",
               "rtt_p99", scale=1000.0),
        Series("ebpf_slo_violation_rate",
               "Share of RTT samples above their pod's SLO over the last window",
               "slo_violation_rate"),
        Series(HIST.metric, HIST.help, "rtt_hist_total", kind="histogram"),
        Series("ebpf_pod_rtt_p50_seconds", "Pod's TCP srtt p50 over the last window", "rtt_p50",
               per_pod=True),
        Series("ebpf_pod_rtt_p99_seconds", "Pod's TCP srtt p99 over the last window", "rtt_p99",
               per_pod=True),
        Series("ebpf_pod_slo_violation_rate", "Share of the pod's RTT samples above its SLO",
               "slo_violation_rate", per_pod=True),
    ),
    payload=(
        Field("tail_latency_p99", "rtt_p99", 1000.0),  # the seed extender's name (ms)
        Field("slo_violation_rate", "slo_violation_rate"),
        Field("rtt_p50_ms", "rtt_p50", 1000.0),
        Field("rtt_p90_ms", "rtt_p90", 1000.0),
        Field("rtt_p99_ms", "rtt_p99", 1000.0),
        Field("rtt_samples", "rtt_samples", digits=None),
    ),
    pod_payload=(
        Field("rtt_samples", "rtt_samples", digits=None),
        Field("rtt_p50_ms", "rtt_p50", 1000.0),
        Field("rtt_p99_ms", "rtt_p99", 1000.0),
        Field("slo_violation_rate", "slo_violation_rate"),
    ),
    availability="rtt",
    smoke=Smoke(load=loads.tcp_transfers, show="percentiles",
                passive="shows samples wherever TCP carries data with ACKs coming back"),
    lost_map="lost_events",
)


def decode(layout: SlotLayout, row_addrs: Mapping[int, str], row_words: Mapping[int, Iterable[int]],
           row_sums: Mapping[int, int], spilled: Iterable[tuple[str, int, int, int]], lost: int,
           taken_at: float) -> ProbeSnapshot:
    """The maps' raw contents -> snapshot (pure).

    ``row_addrs``: row -> address; ``row_words``: row -> the row's slot counts; ``row_sums``:
    row -> sum of srtt; ``spilled``: (address, slot, count, sum) of the hash for addresses
    without a row."""
    counts: dict[str, dict[int, int]] = defaultdict(dict)
    totals: dict[str, int] = defaultdict(int)
    for row, addr in row_addrs.items():
        slots = counts[addr]
        for slot, n in enumerate(row_words.get(row, ())):
            if n:
                slots[slot] = slots.get(slot, 0) + n
        totals[addr] += row_sums.get(row, 0)
    for addr, slot, n, total in spilled:
        if n:
            counts[addr][slot] = counts[addr].get(slot, 0) + n
        totals[addr] += total
    return ProbeSnapshot(SPEC.name, HIST.unit, taken_at,
                         hists={a: Histogram(layout, c, totals[a]) for a, c in counts.items()},
                         lost=lost)


class TcpRttProbe(BccProbe):
    spec = SPEC

    def check_supported(self) -> None:
        super().check_supported()
        if self.kernel.tracepoint("tcp:tcp_probe").fields["saddr"].size < 28:
            raise ProbeUnsupported("tcp:tcp_probe saddr is not a sockaddr_in6-sized buffer")

    def defines(self) -> dict:
        saddr = self.kernel.tracepoint("tcp:tcp_probe").fields["saddr"]
        # word loads of the address (bpf/tcp_rtt.bpf.c) need alignment and little-endian words
        aligned = saddr.offset % 8 == 0 and sys.byteorder == "little"
        return {**super().defines(), **({"SADDR_ALIGNED": 1} if aligned else {})}

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        layout = self.layout
        row_addrs = address_rows(maps)
        words: dict[int, array] = {r: maps.words("rtt_rows", r * layout.slots, layout.slots)
                                   for r in row_addrs}
        row_sum = dict(maps.items("rtt_row_sum", "I", "Q")) if row_addrs else {}
        sums = {r: row_sum.get(r, 0) for r in row_addrs}
        spilled = [(render_addr(a), slot, n, total)
                   for (a, slot), (n, total) in maps.items("rtt_hist", "16sI", "QQ")]
        return decode(layout, row_addrs, words, sums, spilled, self.lost(maps), time.monotonic())
