"""Scoring policies (pure): a node's report (or None) and the pod -> a score in 0..10.

Every policy answers on the extender scale, 0..10 (kube-scheduler multiplies it by the
extender's ``weight`` and by 10 before adding it to the in-tree plugins' 0..100 scores). A node
without a fresh report is **neutral**, the middle of the range (5): never 0, so a node whose
agent is late or missing is neither preferred nor avoided. A signal the report marks
unavailable is neither a bonus nor a penalty: it is left out and the policy's other terms are
re-weighted around it, as the agent does for its own node score.

- ``node-score`` (default): the agent's ``node_score`` (0..100, higher is healthier) / 10.
- ``seed004``: seed 004's calculateScore, ``base + capacity + fairness + latency - dominance -
  violation`` (points: priority base 35/25/15, 40, 15, 20, 15, 20), truncated to an integer and
  clamped to 0..100 as the seed does, then / 10.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

from extender.wire import MAX_EXTENDER_PRIORITY, pod_priority

NEUTRAL = MAX_EXTENDER_PRIORITY / 2  # 5.0

Policy = Callable[[Mapping[str, Any] | None, Mapping[str, Any] | None], float]


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or math.isinf(v):
        return None
    return float(v)


def _available(report: Mapping[str, Any], flag: str) -> bool:
    av = report.get("availability")
    return not (isinstance(av, Mapping) and av.get(flag) is False)


def node_score_policy(report: Mapping[str, Any] | None, pod: Mapping[str, Any] | None = None) -> float:
    if report is None:
        return NEUTRAL
    s = _num(report.get("node_score"))
    if s is None:
        return NEUTRAL
    return min(max(s, 0.0), 100.0) / 10.0


def seed004_terms(report: Mapping[str, Any], w: Mapping[str, float]) -> dict[str, float]:
    """Each available term's goodness in the seed's own form (may leave [0, 1] for latency, as
    the seed's ``1 - p99/120`` does above 120 ms); an unavailable term is absent."""
    terms: dict[str, float] = {}
    free = []
    cu, ca = _num(report.get("cpu_used")), _num(report.get("cpu_allocatable"))
    if cu is not None and ca and ca > 0 and _available(report, "cpu"):
        free.append(min(max(1 - cu / ca, 0.0), 1.0))
    mu, ma = _num(report.get("memory_used")), _num(report.get("memory_allocatable"))
    if mu is not None and ma and ma > 0 and _available(report, "memory"):
        free.append(min(max(1 - mu / ma, 0.0), 1.0))
    if free:
        terms["capacity"] = sum(free) / len(free)
    f = _num(report.get("per_task_fairness"))
    if f is not None:
        terms["fairness"] = min(max(f, 0.0), 1.0)  # clampFloat, as the seed
    p99 = _num(report.get("tail_latency_p99"))
    if p99 is not None and _available(report, "rtt"):
        terms["latency"] = 1.0 - p99 / w["latency_target_ms"]
    d = _num(report.get("dominant_share"))
    if d is not None:
        terms["dominance"] = 1.0 - d  # the penalty d*15 written as 15*(1-d) - 15
    v = _num(report.get("slo_violation_rate"))
    if v is not None and _available(report, "rtt"):
        terms["violation"] = 1.0 - v
    return terms


def priority_base(pod: Mapping[str, Any] | None, w: Mapping[str, float]) -> float:
    p = pod_priority(pod)
    if p is None or 0 <= p < w["high_priority_threshold"]:
        return w["priority_normal"]
    return w["priority_high"] if p >= w["high_priority_threshold"] else w["priority_low"]


def seed004_raw(report: Mapping[str, Any], pod: Mapping[str, Any] | None,
                w: Mapping[str, float]) -> float | None:
    """The seed's 0..100 score before truncation; None when no term is available."""
    terms = seed004_terms(report, w)
    if not terms:
        return None
    names = ("capacity", "fairness", "latency", "dominance", "violation")
    total_w = sum(w[n] for n in names)
    avail_w = sum(w[n] for n in terms)
    if avail_w <= 0:
        return None
    bonus = sum(w[n] * g for n, g in terms.items()) * (total_w / avail_w)
    penalties = w["dominance"] + w["violation"]  # the seed subtracts them: 15*d + 20*v
    return priority_base(pod, w) + bonus - penalties


def make_seed004(weights: Mapping[str, float]) -> Policy:
    w = dict(weights)

    def seed004(report: Mapping[str, Any] | None, pod: Mapping[str, Any] | None = None) -> float:
        if report is None:
            return NEUTRAL
        raw = seed004_raw(report, pod, w)
        if raw is None:
            return NEUTRAL
        clamped = min(max(int(raw), 0), 100)  # int64(...) truncates, then clampScore
        return clamped / 10.0
    return seed004


def make_policy(name: str, seed004_weights: Mapping[str, float]) -> tuple[Policy, Callable[[Any], Any]]:
    """(policy, pod_key): ``pod_key(pod)`` is all a policy reads from the pod, so a node's score
    can be cached per report and pod key (node-score reads nothing; seed004 the priority base)."""
    if name == "node-score":
        return node_score_policy, lambda pod: None
    if name == "seed004":
        w = dict(seed004_weights)
        return make_seed004(w), lambda pod: priority_base(pod, w)
    raise ValueError(f"unknown policy {name!r}")


def to_priority(score: float) -> int:
    """0..10 float -> the integer Score of a HostPriority (round half up, clamped)."""
    return int(min(max(math.floor(score + 0.5), 0), MAX_EXTENDER_PRIORITY))
