"""smoke-test: load every probe, make a little bounded load of our own, report what was seen.

``--passive`` makes no load: it watches the node's own traffic, and a probe that saw nothing
there is "quiet", not failed (a healthy node may have no retransmits or drops).

The load stays on loopback and is bounded in bytes and time: a TCP transfer (IPv4 and, where
loopback has it, IPv6), connections to a closed port (NO_SOCKET drops), a listener with a full
backlog that makes waiting clients retransmit their SYNs, and a short burst of CPU contention
(twice as many busy processes as CPUs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator, Mapping

from agent.model import ProbeSnapshot, ProbeState, ProbeStateKind, merge_histograms
from agent.stats.histogram import percentile

TRANSFER_BYTES = 16 * 1024 * 1024
TRANSFER_SECONDS = 2.0


def _free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_transfer(family: int = socket.AF_INET, host: str = "127.0.0.1",
                 nbytes: int = TRANSFER_BYTES, seconds: float = TRANSFER_SECONDS) -> int:
    """Send up to ``nbytes`` over loopback within ``seconds``; returns bytes sent."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(1)
    srv.settimeout(seconds + 2)

    def sink() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(seconds + 2)
                while conn.recv(1 << 16):
                    pass

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    sent = 0
    deadline = time.monotonic() + seconds
    chunk = b"\0" * 65536
    try:
        with socket.create_connection(srv.getsockname()[:2], timeout=seconds) as c:
            while sent < nbytes and time.monotonic() < deadline:
                c.sendall(chunk)
                sent += len(chunk)
    finally:
        t.join(seconds + 3)
        srv.close()
    return sent


def closed_port_connects(count: int = 5, host: str = "127.0.0.1") -> int:
    """Connect to a port nobody listens on; each SYN is dropped as NO_SOCKET."""
    refused = 0
    for _ in range(count):
        port = _free_port(socket.AF_INET, host)
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect((host, port))
            except ConnectionRefusedError:
                refused += 1
            except OSError:
                pass
    return refused


@contextlib.contextmanager
def syn_backlog_retransmits(clients: int = 4, host: str = "127.0.0.1") -> Iterator[None]:
    """A listener with ``listen(0)`` that never accepts: further SYNs are dropped and each
    waiting client retransmits its SYN (first after ~1 s). Held open for the ``with`` body."""
    lst = socket.socket()
    lst.bind((host, 0))
    lst.listen(0)
    socks = []
    try:
        for _ in range(clients):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lst.getsockname())
            socks.append(s)
        yield
    finally:
        for s in socks:
            s.close()
        lst.close()


def cpu_contention(seconds: float = 1.0, factor: int = 2) -> int:
    """Run ``factor`` busy processes per CPU for ``seconds``; returns how many ran."""
    n = factor * (os.cpu_count() or 1)
    code = f"import time\nend=time.monotonic()+{seconds}\nwhile time.monotonic()<end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    for p in procs:
        try:
            p.wait(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return n


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def generate_load() -> dict[str, int]:
    """All of the above, overlapped; about three seconds."""
    done: dict[str, int] = {}
    with syn_backlog_retransmits():
        t0 = time.monotonic()
        done["tcp_bytes_v4"] = tcp_transfer()
        if ipv6_loopback():
            done["tcp_bytes_v6"] = tcp_transfer(socket.AF_INET6, "::1", nbytes=4 << 20, seconds=1)
        done["closed_port_refused"] = closed_port_connects()
        done["cpu_hogs"] = cpu_contention()
        # the first SYN retransmission comes about one second after the connect
        remaining = 2.5 - (time.monotonic() - t0)
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
    p50: float | None = None
    p99: float | None = None
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
              passive: bool = False) -> dict[str, ProbeResult]:
    out = {}
    for name, st in states.items():
        r = ProbeResult(state=st.state.value, reason=st.reason, detail=dict(st.detail))
        w = windows.get(name)
        if w is not None:
            r.events = w.events
            r.lost = w.lost
            if w.hists:
                h = merge_histograms(w.hists.values())
                r.unit = w.unit
                r.p50 = percentile(h.layout, h.counts, 0.50)
                r.p99 = percentile(h.layout, h.counts, 0.99)
            if w.counts and name == "skb_drop":
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


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "us":
        return f"{v / 1000:.3f}ms"
    if unit == "ns":
        return f"{v / 1e6:.3f}ms"
    return f"{v:g}"


def render_table(results: Mapping[str, ProbeResult]) -> str:
    rows = [("PROBE", "STATE", "EVENTS", "DETAIL")]
    for name, r in results.items():
        if r.state != "up":
            detail = r.reason
        elif r.unit:
            detail = f"p50={_fmt_value(r.p50, r.unit)} p99={_fmt_value(r.p99, r.unit)}"
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
