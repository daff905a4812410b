"""ReportStore: the newest report per node, with freshness (pure; the clock is injected).

Rules (the push contract, schemas/node-report.schema.json):

- per node, the newest report of the current ``agent_instance`` wins: one from the same
  instance with a lower or equal ``sequence`` (late, duplicate) is **stale** and changes nothing;
- a report from a new instance (the agent restarted: sequence from 1 again) replaces the old
  one; the old instance is remembered as retired, so its late reports are stale too (a restart
  never flaps back to the dead process);
- a report is **fresh** for its TTL after it was *received* (the extender's clock, never the
  agent's timestamp, so clock skew between nodes does not matter): ``ttl_seconds`` when set,
  else ``ttl_factor`` x the report's ``push_interval_seconds``;
- an expired report is kept (the node is known, not fresh) until ``forget_after`` has passed
  since it expired, then dropped, so the store is bounded by the nodes that push.

Memory: an entry keeps a summary (every top-level field except the per-pod lists, plus the
pods' summed network bytes ``pod_net_rx_bytes`` / ``pod_net_tx_bytes`` the bandwidth filter
reads) and the report as received, zlib-compressed (``Entry.full_report()``): 5,000 nodes of
30 pods each fit in tens of MB instead of the ~300 MB their decoded dicts take.

Thread-safe: one lock around every read and write.
"""

from __future__ import annotations

import json
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

RETIRED_PER_NODE = 8  # old instances remembered per node (restarts within forget_after)


@dataclass(frozen=True)
class Outcome:
    status: str  # "accepted" | "stale" | "rejected"
    reason: str = ""
    cause: str = ""  # rejected: a short label for metrics; stale: "duplicate" | "out_of_order" | "retired"
    restart: bool = False  # accepted from a new instance of a node already known


@dataclass(frozen=True)
class Entry:
    node: str
    instance: str
    sequence: int
    received_at: float
    ttl: float
    report: Mapping[str, Any]  # the summary: top-level fields, no per-pod lists
    raw: bytes = b""  # the report as received, zlib-compressed
    # scores computed from this report, by pod key (extender.policies.make_policy)
    scores: dict = field(default_factory=dict, compare=False, repr=False)

    def full_report(self) -> dict[str, Any]:
        """The whole report as the agent sent it (pods included)."""
        return json.loads(zlib.decompress(self.raw)) if self.raw else dict(self.report)

    def fresh(self, now: float) -> bool:
        return now - self.received_at < self.ttl

    def expires_at(self) -> float:
        return self.received_at + self.ttl


SUMMARY_DROPS = ("pods", "pod_uids")


def summarize(report: Mapping[str, Any]) -> dict[str, Any]:
    """Top-level fields without the per-pod lists, plus the pods' summed network bytes over the
    window (pods on the host network are the node's traffic, not attributed, and left out)."""
    out = {k: v for k, v in report.items() if k not in SUMMARY_DROPS}
    rx = tx = 0
    for p in report.get("pods") or ():
        if not isinstance(p, Mapping) or p.get("host_network"):
            continue
        r, t = p.get("net_rx_bytes"), p.get("net_tx_bytes")
        rx += r if type(r) is int else 0
        tx += t if type(t) is int else 0
    out["pod_net_rx_bytes"], out["pod_net_tx_bytes"] = rx, tx
    out["pod_count"] = len(report.get("pods") or ())
    return out


class ReportStore:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic, ttl_factor: float = 3.0,
                 ttl_seconds: float = 0.0, forget_after: float = 3600.0) -> None:
        self.clock = clock
        self.ttl_factor = ttl_factor
        self.ttl_seconds = ttl_seconds
        self.forget_after = forget_after
        self._lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._retired: dict[str, list[str]] = {}
        self._expired_seen: set[str] = set()  # nodes whose current entry was counted as expired
        self.expired_total = 0

    def ttl_for(self, report: Mapping[str, Any]) -> float:
        if self.ttl_seconds > 0:
            return float(self.ttl_seconds)
        return self.ttl_factor * float(report["push_interval_seconds"])

    def ingest(self, report: Mapping[str, Any], raw: bytes | None = None) -> Outcome:
        """Store ``report`` (already validated against the schema) if it is the newest; ``raw``:
        its JSON as received (else it is encoded here)."""
        node = report["node_name"]
        instance = report["agent_instance"]
        seq = int(report["sequence"])
        # prepared outside the lock (readers never wait for zlib); wasted only on a stale report
        packed = zlib.compress(raw if raw is not None else json.dumps(report).encode(), 1)
        summary = summarize(report)
        ttl = self.ttl_for(report)
        with self._lock:
            now = self.clock()
            cur = self._entries.get(node)
            restart = False
            if cur is not None:
                if cur.instance == instance:
                    if seq == cur.sequence:
                        return Outcome("stale", f"duplicate: sequence {seq} of instance {instance} "
                                       "is already held", "duplicate")
                    if seq < cur.sequence:
                        return Outcome("stale", f"out of order: sequence {seq} is older than the "
                                       f"held {cur.sequence} of instance {instance}", "out_of_order")
                else:
                    if instance in self._retired.get(node, ()):
                        return Outcome("stale", f"instance {instance} was replaced by "
                                       f"{cur.instance} (the agent restarted)", "retired")
                    retired = self._retired.setdefault(node, [])
                    retired.append(cur.instance)
                    del retired[:-RETIRED_PER_NODE]
                    restart = True
            self._entries[node] = Entry(node, instance, seq, now, ttl, summary, packed)
            self._expired_seen.discard(node)
            return Outcome("accepted", restart=restart)

    def get(self, node: str) -> Entry | None:
        """The newest entry of ``node``, fresh or not."""
        with self._lock:
            return self._entries.get(node)

    def fresh(self, node: str) -> Entry | None:
        """The node's entry while it is fresh, else None."""
        with self._lock:
            e = self._entries.get(node)
            now = self.clock()
        return e if e is not None and e.fresh(now) else None

    def fresh_many(self, nodes) -> dict[str, Entry]:
        """Fresh entries of the given nodes (one lock and one clock reading for all)."""
        with self._lock:
            now = self.clock()
            out = {}
            get = self._entries.get
            for n in nodes:
                e = get(n)
                if e is not None and now - e.received_at < e.ttl:
                    out[n] = e
            return out

    def sweep(self) -> tuple[int, int]:
        """Count newly expired entries, forget long-expired ones; returns (known, fresh)."""
        with self._lock:
            now = self.clock()
            fresh = 0
            for node, e in list(self._entries.items()):
                if e.fresh(now):
                    fresh += 1
                    continue
                if node not in self._expired_seen:
                    self._expired_seen.add(node)
                    self.expired_total += 1
                if now - e.expires_at() >= self.forget_after:
                    del self._entries[node]
                    self._expired_seen.discard(node)
                    self._retired.pop(node, None)
            return len(self._entries), fresh

    def nodes(self) -> list[str]:
        with self._lock:
            return sorted(self._entries)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
