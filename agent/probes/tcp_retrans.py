"""tcp_retrans: retransmitted skbs per local address, from tcp:tcp_retransmit_skb."""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from agent import loads
from agent.model import ProbeSnapshot
from agent.probes.base import ADDR_ROW_MAPS, BccProbe, address_row_params, address_rows, render_addr
from agent.probes.bpfmaps import Maps
from agent.probes.spec import (Context, Field, Figures, MapSpec, ProbeSpec, Series, Smoke,
                               by_owner)


def summarize(win: ProbeSnapshot, cum: ProbeSnapshot, ctx: Context) -> Figures:
    """Retransmitted skbs in the window, node-wide and per pod (by the pod's addresses), and
    the cumulative counts the Prometheus counters carry."""
    owner = ctx.address_owner()
    in_window = {uid: sum(ns) for uid, ns in by_owner(win.counts, owner).items()}
    pods = {}
    for p in ctx.pods:
        if p.host_network:
            continue
        f = {"retrans_events": in_window.get(p.uid, 0)}
        if p.addresses:
            f["retransmit_skbs_total"] = sum(cum.counts.get(a, 0) for a in p.addresses)
        pods[p.uid] = f
    return Figures(node={"retrans_events": sum(win.counts.values()),
                         "retransmit_skbs_total": sum(cum.counts.values())},
                   pods=pods)


SPEC = ProbeSpec(
    name="tcp_retrans",
    source="tcp_retrans.bpf.c",
    summary="retransmitted TCP skbs per local address",
    tracepoints=("tcp:tcp_retransmit_skb",),
    fields={"tcp:tcp_retransmit_skb": ("saddr_v6",)},
    maps=(MapSpec("retrans_rows", 4, 8, lambda c: c.fast_addresses),
          MapSpec("retrans_by_addr", 16, 8, lambda c: c.max_addresses, define="RETRANS_MAX_ENTRIES"),
          MapSpec("lost_events", 4, 8, lambda c: 1),
          *ADDR_ROW_MAPS),
    params=address_row_params,
    attribution="address",
    summarize=summarize,
    series=(
        Series("ebpf_tcp_retransmit_skbs",
               "Retransmitted TCP skbs (one TSO/GSO skb can carry many segments)",
               "retransmit_skbs_total", kind="counter"),
        Series("ebpf_pod_tcp_retransmit_skbs", "Retransmitted TCP skbs from the pod's addresses",
               "retransmit_skbs_total", kind="counter", per_pod=True),
    ),
    payload=(Field("retrans_events", "retrans_events", digits=None),),
    pod_payload=(Field("retrans_events", "retrans_events", digits=None),),
    availability="retrans_events",
    smoke=Smoke(load=loads.syn_backlog_retransmits, settle_seconds=2.5, background=True,
                passive="quiet on a healthy node: retransmits come from loss or timeouts"),
    lost_map="lost_events",
)


def decode(row_addrs: Mapping[int, str], row_counts: Mapping[int, int],
           spilled: Iterable[tuple[str, int]], lost: int, taken_at: float) -> ProbeSnapshot:
    """Rows (row -> address, row -> count) and the spill hash's (address, count) -> snapshot."""
    counts: dict[str, int] = {}
    for row, addr in row_addrs.items():
        counts[addr] = counts.get(addr, 0) + row_counts.get(row, 0)
    for addr, n in spilled:
        counts[addr] = counts.get(addr, 0) + n
    return ProbeSnapshot(SPEC.name, "", taken_at, counts=counts, lost=lost)


class TcpRetransProbe(BccProbe):
    spec = SPEC

    def snapshot(self, maps: Maps) -> ProbeSnapshot:
        row_addrs = address_rows(maps)
        rows = dict(maps.items("retrans_rows", "I", "Q")) if row_addrs else {}
        row_counts = {r: rows.get(r, 0) for r in row_addrs}
        spilled = [(render_addr(a), n) for a, n in maps.items("retrans_by_addr", "16s", "Q")]
        return decode(row_addrs, row_counts, spilled, self.lost(maps), time.monotonic())
