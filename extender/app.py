"""The extender as one object: config + store + clock + policy + metrics. No sockets here.

``Extender(config, clock=...)`` is the API the HTTP server wraps and the experiment's placement
replay (issue 19) drives in-process with a fake clock (docs/extender.md):

- ``receive_report(body: bytes, headers: Mapping[str, str]) -> (status, body_dict)``: a push
  exactly as ``POST /metrics/report`` answers it (200 accepted/stale, 400, 401, 413);
- ``prioritize(args: dict) -> list``: a HostPriorityList (``[{"Host", "Score"}]``, 0..10);
- ``filter(args: dict) -> dict``: an ExtenderFilterResult;
- ``score(node, pod=None) -> float``: the unrounded 0..10 score of one node (for reports);
- ``registry``: its own Prometheus CollectorRegistry; ``health() -> (ok, why)``.

Bad input never raises out of these methods: a malformed ExtenderArgs gets an empty list
(prioritize) or ``Error`` set (filter); a bad push gets 400 and changes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import time
from typing import Any, Callable, Iterator, Mapping

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from extender.config import ExtenderConfig
from extender.filtering import headroom_check, parse_quantity
from extender.policies import NEUTRAL, make_policy, to_priority
from extender.store import ReportStore
from extender.validate import SchemaError, compile_schema
from extender.wire import (error_filter_result, filter_result, host_priority_list, node_quantity,
                           parse_args, pod_annotation)

log = logging.getLogger(__name__)

SCHEMA_MAJOR = "1"
NEUTRAL_PRIORITY = to_priority(NEUTRAL)
REJECT_CAUSES = ("invalid_json", "schema", "schema_major", "unauthenticated", "too_large")
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StoreCollector(Collector):
    def __init__(self, ext: "Extender") -> None:
        self.ext = ext

    def collect(self) -> Iterator[Metric]:
        known, fresh = self.ext.store.sweep()
        g = GaugeMetricFamily("ebpf_extender_nodes_known", "Nodes with a stored report, fresh or expired")
        g.add_metric([], known)
        yield g
        g = GaugeMetricFamily("ebpf_extender_nodes_fresh", "Nodes whose newest report is within its TTL")
        g.add_metric([], fresh)
        yield g
        c = CounterMetricFamily("ebpf_extender_reports_expired",
                                "Node reports that passed their TTL without a newer one (node neutral)")
        c.add_metric([], self.ext.store.expired_total)
        yield c
        counts = list(self.ext.score_counts)
        h = HistogramMetricFamily("ebpf_extender_scores", "Scores answered to prioritize (0..10)")
        cum, buckets = 0, []
        for i, n in enumerate(counts):
            cum += n
            buckets.append((str(float(i)), cum))
        buckets.append(("+Inf", cum))
        h.add_metric([], buckets, sum_value=self.ext._score_sum)
        yield h


class Extender:
    def __init__(self, config: ExtenderConfig | None = None, *,
                 clock: Callable[[], float] = time.monotonic,
                 registry: CollectorRegistry | None = None) -> None:
        self.config = config or ExtenderConfig()
        self.clock = clock
        self.store = ReportStore(clock=clock, ttl_factor=self.config.ttl_factor,
                                 ttl_seconds=self.config.ttl_seconds,
                                 forget_after=self.config.forget_after)
        with open(self.config.schema_file) as f:
            self._validate = compile_schema(json.load(f))
        self.policy_name = self.config.policy
        self.policy, self.pod_key = make_policy(self.config.policy, self.config.seed004)
        self._token_cache: tuple[float, str] | None = None
        self.started = time.monotonic()
        r = self.registry = registry or CollectorRegistry()
        self.m_accepted = Counter("ebpf_extender_reports_accepted", "Node reports accepted and stored",
                                  registry=r)
        self.m_restarts = Counter("ebpf_extender_agent_restarts",
                                  "Accepted reports from a new agent instance of a known node", registry=r)
        self.m_stale = Counter("ebpf_extender_reports_stale",
                               "Node reports answered stale (a newer one of that agent is held)",
                               ["cause"], registry=r)
        self.m_rejected = Counter("ebpf_extender_reports_rejected", "Node reports refused, by cause",
                                  ["cause"], registry=r)
        for c in REJECT_CAUSES:
            self.m_rejected.labels(c)
        for c in ("duplicate", "out_of_order", "retired"):
            self.m_stale.labels(c)
        self.m_latency = Histogram("ebpf_extender_request_duration_seconds",
                                   "Time to answer a scheduler call (decoded args to answer)",
                                   ["verb"], buckets=LATENCY_BUCKETS, registry=r)
        self.m_requests = Counter("ebpf_extender_requests", "Scheduler calls by verb and result",
                                  ["verb", "result"], registry=r)
        for v in ("prioritize", "filter"):
            for res in ("ok", "error"):
                self.m_requests.labels(v, res)
        self.score_counts = [0] * 11  # answered scores 0..10 (exported as a histogram)
        self._score_sum = 0
        self.m_neutral = Counter("ebpf_extender_neutral_scores",
                                 "Nodes scored neutral (5) for want of a fresh report", registry=r)
        self.m_filtered = Counter("ebpf_extender_filter_failed_nodes",
                                  "Nodes a filter call removed (not enough measured network headroom)",
                                  registry=r)
        r.register(_StoreCollector(self))

    # -- push -------------------------------------------------------------------------------------
    def _token(self) -> str:
        """The expected bearer token, re-read when the file changes (rotation)."""
        path = self.config.token_file
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return self._token_cache[1] if self._token_cache else ""
        if self._token_cache is None or self._token_cache[0] != mtime:
            with open(path) as f:
                self._token_cache = (mtime, f.read().strip())
        return self._token_cache[1]

    def _reject(self, status: int, cause: str, reason: str) -> tuple[int, dict]:
        self.m_rejected.labels(cause).inc()
        return status, {"status": "rejected", "error": reason}

    def receive_report(self, body: bytes, headers: Mapping[str, str] | None = None) -> tuple[int, dict]:
        """One push. Answers per push contract v2: 200 {"status": "accepted"|"stale"}; 400 (bad
        JSON, schema, unknown major version), 401 (token), 413 (too large): dropped by the
        agent, never retried. A refused push changes nothing."""
        try:
            return self._receive(body, headers or {})
        except Exception as e:  # noqa: BLE001 - a push must never take the store down
            log.exception("unexpected error ingesting a report")
            return 500, {"status": "error", "error": f"{type(e).__name__}: {e}"}

    def _receive(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, dict]:
        if self.config.token_file:
            auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
            want = self._token()
            scheme, _, got = auth.partition(" ")
            if not want or scheme.lower() != "bearer" or not hmac.compare_digest(
                    got.strip().encode(), want.encode()):
                return self._reject(401, "unauthenticated", "a valid Authorization: Bearer token is required")
        if len(body) > self.config.max_body_bytes:
            return self._reject(413, "too_large", f"body of {len(body)} bytes is above the limit of "
                                f"{self.config.max_body_bytes} (max_body_bytes)")
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            return self._reject(400, "invalid_json", f"not JSON: {e}")
        if not isinstance(doc, dict):
            return self._reject(400, "invalid_json", "the report must be a JSON object")
        ver = doc.get("schema_version")
        if not isinstance(ver, str) or ver.split(".", 1)[0] != SCHEMA_MAJOR:
            return self._reject(400, "schema_major", f"schema_version {ver!r}: this extender reads "
                                f"major version {SCHEMA_MAJOR} (1.x) only")
        try:
            self._validate(doc)
        except SchemaError as e:
            return self._reject(400, "schema", f"does not match node-report.schema.json: {e}")
        out = self.store.ingest(doc, body)
        if out.status == "accepted":
            self.m_accepted.inc()
            if out.restart:
                self.m_restarts.inc()
            return 200, {"status": "accepted"}
        self.m_stale.labels(out.cause).inc()
        return 200, {"status": "stale", "reason": out.reason}

    # -- scheduler verbs -----------------------------------------------------------------------
    def score(self, node: str, pod: Mapping[str, Any] | None = None) -> float:
        """The node's unrounded score, 0..10 (neutral 5 without a fresh report)."""
        e = self.store.fresh(node)
        return self.policy(e.report if e else None, pod)

    def prioritize(self, args: Any) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        try:
            a = parse_args(args)
        except ValueError as e:
            self.m_requests.labels("prioritize", "error").inc()
            log.warning("prioritize: malformed ExtenderArgs (%s): answering an empty list", e)
            return []
        try:
            fresh = self.store.fresh_many(a.node_names)
            key = self.pod_key(a.pod)
            policy = self.policy
            out = []
            neutral = 0
            for n in a.node_names:
                e = fresh.get(n)
                if e is None:
                    neutral += 1
                    out.append((n, NEUTRAL_PRIORITY))
                    continue
                p = e.scores.get(key)
                if p is None:  # once per report and pod key; a policy is pure
                    p = e.scores[key] = to_priority(policy(e.report, a.pod))
                out.append((n, p))
            counts = self.score_counts
            for _, p in out:
                counts[p] += 1
            self._score_sum += sum(p for _, p in out)
            if neutral:
                self.m_neutral.inc(neutral)
        except Exception:  # noqa: BLE001 - never fail the scheduling cycle
            log.exception("prioritize failed: answering an empty list")
            self.m_requests.labels("prioritize", "error").inc()
            return []
        self.m_requests.labels("prioritize", "ok").inc()
        self.m_latency.labels("prioritize").observe(time.perf_counter() - t0)
        return host_priority_list(out)

    def filter(self, args: Any) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            a = parse_args(args)
        except ValueError as e:
            self.m_requests.labels("filter", "error").inc()
            log.warning("filter: malformed ExtenderArgs (%s)", e)
            return error_filter_result(f"malformed ExtenderArgs: {e}")
        try:
            result = self._filter(a)
        except Exception as e:  # noqa: BLE001
            log.exception("filter failed")
            self.m_requests.labels("filter", "error").inc()
            return error_filter_result(f"extender error: {type(e).__name__}: {e}")
        self.m_requests.labels("filter", "error" if result["Error"] else "ok").inc()
        self.m_latency.labels("filter").observe(time.perf_counter() - t0)
        return result

    def _filter(self, a) -> dict[str, Any]:
        raw = pod_annotation(a.pod, self.config.bandwidth_annotation)
        if raw is None:
            return filter_result(a, a.node_names, {})
        try:
            request = parse_quantity(raw)
        except ValueError as e:
            return filter_result(a, a.node_names, {},
                                 error=f"annotation {self.config.bandwidth_annotation}: {e}")
        fresh = self.store.fresh_many(a.node_names)
        default_cap = self.config.default_node_capacity_bps or None
        passed, failed = [], {}
        objs = dict(zip(a.node_names, a.nodes)) if a.nodes is not None else {}
        for n in a.node_names:
            cap = default_cap
            if n in objs:
                q = node_quantity(objs[n], self.config.capacity_resource)
                if q is not None:
                    try:
                        cap = parse_quantity(q)
                    except ValueError:
                        pass
            e = fresh.get(n)
            ok, why = headroom_check(request, cap, e.report if e else None)
            if ok:
                passed.append(n)
            else:
                failed[n] = why
        if failed:
            self.m_filtered.inc(len(failed))
        return filter_result(a, passed, failed)

    def nodes_summary(self) -> dict[str, Any]:
        """Every held node: instance, sequence, age, TTL, fresh, and its current score."""
        now = self.clock()
        out = {}
        for n in self.store.nodes():
            e = self.store.get(n)
            if e is None:
                continue
            fresh = e.fresh(now)
            out[n] = {"instance": e.instance, "sequence": e.sequence, "fresh": fresh,
                      "age_seconds": round(now - e.received_at, 3), "ttl_seconds": e.ttl,
                      "score": self.policy(e.report, None) if fresh else NEUTRAL}
        return {"policy": self.policy_name, "nodes": out}

    # -- health ------------------------------------------------------------------------------------
    def health(self) -> tuple[bool, str]:
        known, fresh = self.store.sweep()
        return True, f"{fresh} of {known} known nodes fresh, policy {self.policy_name}"
