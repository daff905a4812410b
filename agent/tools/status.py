"""``ebpf-edge-agent status``: is the agent on this node healthy, and why not.

Reads ``/report`` (probe states and reasons, pods covered, sequence), ``/readyz`` (the agent's
own freshness verdict and the age of its newest report, measured on its monotonic clock) and
``/metrics`` (push state per endpoint: ``ebpf_push_*``; RSS: ``process_resident_memory_bytes``;
start time: ``process_start_time_seconds``).

Healthy = every probe ``up`` or ``unsupported``, the newest report fresh (``/readyz`` 200: younger
than 3 x sample_interval), and, where push is configured, each endpoint's last delivery within
3 x push_interval (or no delivery yet while the agent is younger than that). Exit status:
0 healthy, 1 unhealthy, 2 the agent could not be read.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Sequence

from agent.tools import client

EXIT_HEALTHY, EXIT_UNHEALTHY, EXIT_UNREACHABLE = 0, 1, 2

_AGE = re.compile(r"newest report (\d+(?:\.\d+)?)s old")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class PushEndpoint:
    endpoint: str
    address: str
    last_success_age: float | None  # seconds; None: never delivered
    delivered: int
    pending: bool
    failures: dict[str, int]
    ok: bool
    detail: str


@dataclass
class Status:
    url: str
    healthy: bool
    checks: list[Check] = field(default_factory=list)
    probes: dict[str, dict[str, str]] = field(default_factory=dict)
    report_age_seconds: float | None = None
    report_sequence: int | None = None
    node_name: str | None = None
    agent_version: str | None = None
    agent_instance: str | None = None
    pods_covered: int | None = None
    rss_bytes: float | None = None
    push: list[PushEndpoint] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_timestamp(text: str) -> float:
    """RFC 3339 (the report's ``timestamp``) -> Unix time; ValueError quoting the text."""
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        raise ValueError(f"timestamp {text!r} is not RFC 3339") from None


def readyz_age(body: str) -> float | None:
    """The age of the newest report as /readyz states it (the agent's own clock)."""
    m = _AGE.search(body)
    return float(m.group(1)) if m else None


def _samples(metrics: Sequence[client.Sample], name: str) -> list[client.Sample]:
    return [s for s in metrics if s.name == name]


def _one(metrics: Sequence[client.Sample], name: str) -> float | None:
    s = _samples(metrics, name)
    return s[0].value if s else None


def push_state(metrics: Sequence[client.Sample], push_interval: float, now: float) -> list[PushEndpoint]:
    """One entry per push endpoint found in /metrics (none: push is not configured)."""
    keys = sorted({(s.labels.get("endpoint", ""), s.labels.get("address", ""))
                   for s in _samples(metrics, "ebpf_push_attempts_total")})
    started = _one(metrics, "process_start_time_seconds")
    limit = 3 * push_interval
    out = []
    for ep, addr in keys:
        def val(name: str, **more: str) -> float | None:
            for s in _samples(metrics, name):
                if s.labels.get("endpoint", "") == ep and s.labels.get("address", "") == addr and \
                        all(s.labels.get(k) == v for k, v in more.items()):
                    return s.value
            return None

        last = val("ebpf_push_last_success_timestamp_seconds")
        failures = {s.labels["cause"]: int(s.value) for s in _samples(metrics, "ebpf_push_failures_total")
                    if s.labels.get("endpoint", "") == ep and s.labels.get("address", "") == addr
                    and s.value > 0 and "cause" in s.labels}
        age = None if last is None else max(0.0, now - last)
        if age is not None:
            ok = age <= limit
            detail = (f"last delivery {age:.0f}s ago" + ("" if ok else
                      f", more than 3 x push_interval ({limit:g}s)"))
        elif started is not None and now - started <= limit:
            ok, detail = True, (f"no delivery yet; the agent started {now - started:.0f}s ago "
                                f"(allowed: 3 x push_interval = {limit:g}s)")
        else:
            ok, detail = False, "never delivered" + (
                f" in the {now - started:.0f}s since the agent started" if started is not None else "")
        if failures and not ok:
            detail += "; failures: " + ", ".join(f"{c}={n}" for c, n in sorted(failures.items()))
        out.append(PushEndpoint(ep, addr, age, int(val("ebpf_push_delivered_total") or 0),
                                bool(val("ebpf_push_pending")), failures, ok, detail))
    return out


def assess(url: str, report: dict[str, Any] | None, readyz: tuple[int, str],
           metrics: Sequence[client.Sample], now: float) -> Status:
    """Pure: the verdict from what the three endpoints answered."""
    st = Status(url=url, healthy=True)
    code, body = readyz
    st.rss_bytes = _one(metrics, "process_resident_memory_bytes")
    if report is None:
        st.checks.append(Check("report", False, "the agent has no report yet (/report 503)"))
    else:
        st.node_name = report.get("node_name")
        st.agent_version = report.get("agent_version")
        st.agent_instance = report.get("agent_instance")
        st.report_sequence = report.get("sequence")
        uids = report.get("pod_uids")
        st.pods_covered = len(uids) if isinstance(uids, list) else len(report.get("pods") or [])
        probes = report.get("probes") or {}
        if not probes:
            st.checks.append(Check("probes", False, "the report lists no probe"))
        for name, p in sorted(probes.items()):
            state = str(p.get("state", "?"))
            reason = str(p.get("reason", ""))
            st.probes[name] = {"state": state, **({"reason": reason} if reason else {})}
            ok = state in ("up", "unsupported")
            st.checks.append(Check(f"probe {name}", ok, state + (f" ({reason})" if reason else "")))
        st.report_age_seconds = readyz_age(body)
        if st.report_age_seconds is None and report.get("timestamp"):
            try:
                st.report_age_seconds = max(0.0, now - parse_timestamp(report["timestamp"]))
            except ValueError:
                pass
    first = body.strip().splitlines()[0] if body.strip() else f"HTTP {code}"
    st.checks.append(Check("freshness", code == 200, f"/readyz {code}: {first}"))
    interval = float((report or {}).get("push_interval_seconds") or 30.0)
    st.push = push_state(metrics, interval, now)
    for p in st.push:
        st.checks.append(Check(f"push {p.endpoint}" + (f" via {p.address}" if p.address else ""),
                               p.ok, p.detail))
    st.healthy = all(c.ok for c in st.checks)
    return st


def _mib(v: float | None) -> str:
    return "?" if v is None else f"{v / (1 << 20):.1f} MiB"


def render(st: Status) -> str:
    lines = [f"agent      {st.url}  node {st.node_name or '?'}  version {st.agent_version or '?'}"
             f"  instance {st.agent_instance or '?'}"]
    age = "?" if st.report_age_seconds is None else f"{st.report_age_seconds:.1f}s"
    lines.append(f"report     sequence {st.report_sequence if st.report_sequence is not None else '?'}"
                 f", newest {age} old, {st.pods_covered if st.pods_covered is not None else '?'} pods covered")
    lines.append(f"memory     RSS {_mib(st.rss_bytes)}")
    if not st.push:
        lines.append("push       not configured")
    width = max([len(c.name) for c in st.checks] + [10])
    for c in st.checks:
        lines.append(f"{'ok  ' if c.ok else 'FAIL'} {c.name:<{width}}  {c.detail}")
    lines.append("HEALTHY" if st.healthy else
                 "UNHEALTHY: " + "; ".join(c.name for c in st.checks if not c.ok))
    return "\n".join(lines)


def run(url: str, as_json: bool = False, timeout: float = client.DEFAULT_TIMEOUT,
        now=time.time, out=print) -> int:
    try:
        report = client.fetch_report(url, timeout)
        ready = client.get(url + "/readyz", timeout)
        metrics = client.fetch_metrics(url, timeout)
    except client.AgentUnreachable as e:
        if as_json:
            out(json.dumps({"url": url, "healthy": False, "error": str(e)}))
        else:
            out(f"UNREACHABLE: {e}")
        return EXIT_UNREACHABLE
    st = assess(url, report, (ready.status, ready.body.decode("utf-8", "replace")), metrics, now())
    out(json.dumps(st.as_dict(), indent=1) if as_json else render(st))
    return EXIT_HEALTHY if st.healthy else EXIT_UNHEALTHY
