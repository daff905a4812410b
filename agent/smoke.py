"""smoke-test: load every probe, make a little bounded load of our own, report what was seen.

``--passive`` makes no load: it watches the node's own traffic, and a probe that saw nothing
there is "quiet", not failed (a healthy node may have no retransmits or drops).

Each probe's spec says how it is provoked (``Smoke.load``, from agent/loads.py: loopback only,
bounded in bytes and time) and how its result is shown; this module names no probe.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from agent.model import ProbeSnapshot, ProbeState, ProbeStateKind, merge_histograms
from agent.probes import registry
from agent.probes.spec import ProbeSpec, node_hists
from agent.stats.histogram import percentile

def generate_load(specs: Sequence[ProbeSpec] | None = None) -> dict[str, int]:
    """Every probe's own smoke load (its spec's ``Smoke.load``), overlapped: the loads that
    hold state open (a full SYN backlog) first, then the others in turn; then wait until each
    load's events had time to arrive. About three seconds for the four probes."""
    specs = tuple(specs) if specs is not None else registry.specs()
    smokes = [s.smoke for s in specs if s.smoke is not None and s.smoke.load is not None]
    smokes.sort(key=lambda sm: not sm.background)  # stable: background loads first
    done: dict[str, int] = {}
    settle_until = time.monotonic()
    with contextlib.ExitStack() as stack:
        for sm in smokes:
            t0 = time.monotonic()
            done.update(stack.enter_context(sm.load()))
            settle_until = max(settle_until, t0 + sm.settle_seconds)
        remaining = settle_until - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
    return done


# ---------------------------------------------------------------------------------------------
# summary


@dataclass
class ProbeResult:
    state: str
    events: int = 0
    reason: str = ""
    unit: str = ""
    p50: float | None = None  # in the probe's unit
    p99: float | None = None
    unit_seconds: float | None = None
    top_reasons: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    detail: dict[str, str] = field(default_factory=dict)
    ns_per_event: float | None = None
    quiet: bool = False  # passive mode: up and readable, but no events in the window

    def as_dict(self) -> dict:
        d = {"state": self.state, "events": self.events}
        if self.quiet:
            d["quiet"] = True
        if self.reason:
            d["reason"] = self.reason
        if self.unit:
            d["unit"] = self.unit
            d["p50"] = self.p50
            d["p99"] = self.p99
        if self.top_reasons:
            d["top_reasons"] = self.top_reasons
        d["lost"] = self.lost
        if self.detail:
            d["detail"] = self.detail
        if self.ns_per_event is not None:
            d["ns_per_event"] = round(self.ns_per_event, 1)
        return d


def summarize(states: Mapping[str, ProbeState], windows: Mapping[str, ProbeSnapshot],
              costs: Mapping[str, float] | None = None,
              passive: bool = False,
              specs: Sequence[ProbeSpec] | None = None) -> dict[str, ProbeResult]:
    by_name = {s.name: s for s in (specs if specs is not None else registry.specs())}
    out = {}
    for name, st in states.items():
        r = ProbeResult(state=st.state.value, reason=st.reason, detail=dict(st.detail))
        spec = by_name.get(name)
        show = spec.smoke.show if spec is not None and spec.smoke is not None else "keys"
        w = windows.get(name)
        if w is not None:
            r.events = w.events
            r.lost = w.lost
            hists = node_hists(w.hists)
            if hists:
                h = merge_histograms(hists.values())
                r.unit = w.unit
                r.unit_seconds = spec.hist.unit_seconds if spec is not None and spec.hist else None
                r.p50 = percentile(h.layout, h.counts, 0.50)
                r.p99 = percentile(h.layout, h.counts, 0.99)
            if w.counts and show == "top_keys":
                top = sorted(w.counts.items(), key=lambda kv: -kv[1])[:5]
                r.top_reasons = dict(top)
            if st.state is ProbeStateKind.UP and r.events == 0:
                if passive:
                    r.quiet = True
                    r.reason = "quiet: attached and readable, no events on this node in the window"
                else:
                    r.reason = "attached but saw no events during the smoke load"
        if costs and name in costs:
            r.ns_per_event = costs[name]
        out[name] = r
    return out


def passed(results: Mapping[str, ProbeResult], passive: bool = False) -> bool:
    """Every probe this kernel supports attached and saw events (passive: attached and was
    read; seeing nothing is no failure there)."""
    supported = [r for r in results.values() if r.state != ProbeStateKind.UNSUPPORTED.value]
    return bool(supported) and all(r.state == "up" and (passive or r.events > 0) for r in supported)


def _fmt_value(v: float | None, unit_seconds: float | None) -> str:
    if v is None:
        return "-"
    if unit_seconds is not None:
        return f"{v * unit_seconds * 1000:.3f}ms"
    return f"{v:g}"


def render_table(results: Mapping[str, ProbeResult]) -> str:
    rows = [("PROBE", "STATE", "EVENTS", "DETAIL")]
    for name, r in results.items():
        if r.state != "up":
            detail = r.reason
        elif r.unit:
            detail = f"p50={_fmt_value(r.p50, r.unit_seconds)} p99={_fmt_value(r.p99, r.unit_seconds)}"
        elif r.top_reasons:
            detail = "top: " + ", ".join(f"{k}={v}" for k, v in r.top_reasons.items())
        else:
            detail = r.reason or "by local address"
        if r.state == "up" and r.reason and r.reason not in detail:
            detail += f" ({r.reason})"
        if r.lost:
            detail += f" lost={r.lost}"
        if r.ns_per_event is not None:
            detail += f" cost={r.ns_per_event:.0f}ns/event"
        rows.append((name, "quiet" if r.quiet else r.state, str(r.events), detail))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}"
        for row in rows
    )
