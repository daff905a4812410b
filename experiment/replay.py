"""Placement replay: the recorded windows replayed as a cluster of nodes, pods placed two ways.

**This is a replay of measured windows, not a live cluster.** Each simulated node is assigned
one scenario of the run (several nodes per scenario, baseline included) and, as virtual time
advances one agent window at a time, "pushes" the next recorded report of its scenario (its
own node name, agent instance and sequence; the virtual time as timestamp) to a scorer. A stream
of pods is then placed:

- **baseline**: spread by free allocatable, as the default scheduler's LeastAllocated does
  (score = free share of the node's pod capacity × 100; ties at random);
- **extender**: the same LeastAllocated score plus the extender's prioritize score as
  kube-scheduler adds it: ``score (0..10) × weight × 10``.

Each placed pod then issues requests whose latencies (and failures) are drawn from the
requests the client actually measured while the pod's node's scenario ran; p99 and error rate
are reported per scenario mix for both placements. There is more degraded capacity than
healthy, so once the healthy nodes are full the ranking *among* degraded nodes decides.

The scorer is the real extender of this repository (``extender.Extender``, issue 18), in
process, driven by the replay's virtual clock: its schema validation, TTL (3 x the report's
push interval) and sequence rules apply to the replayed reports, and a node whose reports stop
goes neutral (5) exactly as it would in front of kube-scheduler. The extender's weight in
kube-scheduler defaults to the one in ``manifests/scheduler/kube-scheduler-config.yaml``
(read from that file, :func:`manifest_weight`). Tests may pass any object with the
:class:`NodeScorer` shape.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Mapping, Protocol, Sequence

from experiment.analysis import Request, parse_time, quantile, requests_between

NEUTRAL = 5.0


class NodeScorer(Protocol):
    """What the replay needs from a scheduler extender (time is the replay's virtual clock)."""

    name: str

    def receive(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        """A node's pushed report arrives at ``now``."""

    def prioritize(self, pod: dict, nodes: Sequence[str], now: float) -> dict[str, float]:
        """0..10 per node for ``pod`` at ``now``, like the extender's HostPriorityList."""


class ExtenderScorer:
    """The in-process extender (``extender.Extender(config, clock=...)``): pushes go through
    ``receive_report(body, headers)``, scores through ``prioritize(ExtenderArgs)`` with
    ``NodeNames`` (``nodeCacheCapable: true``, as manifests/scheduler configures it), i.e. the
    integer 0..10 HostPriority kube-scheduler would receive. The clock is the replay's virtual
    time, set before every call."""

    def __init__(self, config=None) -> None:
        from extender.app import Extender

        self._now = 0.0
        self.rejected: list[tuple[int, dict]] = []  # pushes the extender refused (should be none)
        self.answers: dict[str, int] = {}  # push answers by status ("accepted", "stale")
        self.ext = Extender(config if config is not None else _default_config(),
                            clock=lambda: self._now)
        self.name = f"extender.Extender (in-process, policy {self.ext.policy_name})"

    @property
    def policy(self) -> str:
        return self.ext.policy_name

    def receive(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        self._now = now
        status, doc = self.ext.receive_report(body, headers)
        if status >= 400:
            self.rejected.append((status, doc))
        else:
            self.answers[doc["status"]] = self.answers.get(doc["status"], 0) + 1

    def prioritize(self, pod: dict, nodes: Sequence[str], now: float) -> dict[str, float]:
        self._now = now
        answer = self.ext.prioritize({"Pod": pod, "NodeNames": list(nodes)})
        if len(answer) != len(nodes):  # an empty list is the extender's answer to bad args
            raise RuntimeError(f"the extender answered {len(answer)} scores for {len(nodes)} nodes")
        return {h["Host"]: float(h["Score"]) for h in answer}


def _default_config():
    """The extender's own defaults (policy ``node-score``, TTL 3 x push interval); the schema
    is the repository's. The environment is not read: a replay must not depend on it."""
    from extender.config import ExtenderConfig

    return ExtenderConfig()


def default_scorer() -> "ExtenderScorer":
    return ExtenderScorer()


SCHEDULER_CONFIG = Path(__file__).resolve().parent.parent / "manifests" / "scheduler" / "kube-scheduler-config.yaml"


def manifest_weight(path: Path = SCHEDULER_CONFIG) -> float:
    """The ``weight`` of the prioritizing extender in the shipped KubeSchedulerConfiguration."""
    import yaml

    doc = yaml.safe_load(Path(path).read_text())
    ext = [e for e in (doc or {}).get("extenders") or () if e.get("prioritizeVerb")]
    if len(ext) != 1 or not isinstance(ext[0].get("weight"), (int, float)) or ext[0]["weight"] <= 0:
        raise ValueError(f"{path}: expected one extender with prioritizeVerb and a positive weight, "
                         f"found {ext!r}")
    return float(ext[0]["weight"])


# --- the cluster --------------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    scenario: str
    capacity: int
    windows: Sequence[Mapping]  # the recorded reports of its scenario, replayed in order
    offset: int = 0
    pods: int = 0
    silent_from: int | None = None  # from this step on the node pushes nothing (its agent stopped)

    def pushes_at(self, step: int) -> bool:
        return self.silent_from is None or step < self.silent_from

    def report_at(self, step: int) -> Mapping:
        return self.windows[(self.offset + step) % len(self.windows)]


@dataclass(frozen=True)
class Mix:
    name: str
    nodes: Mapping[str, int]  # scenario -> node count
    capacity: int = 10  # pods per node
    pods: int = 0  # 0: healthy capacity + half the degraded capacity


def default_mixes(scenarios: Sequence[str]) -> list[Mix]:
    """Every scenario beside baseline (1 healthy node, 3 degraded), and all of them together
    (2 healthy, 2 of each scenario)."""
    mixes = [Mix(f"baseline+{s}", {"baseline": 1, s: 3}) for s in scenarios]
    if len(scenarios) > 1:
        mixes.append(Mix("all", {"baseline": 2, **{s: 2 for s in scenarios}}))
    return mixes


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def replayed_body(report: Mapping, node: str, seq: int, now: float) -> bytes:
    doc = dict(report)
    doc.update(node_name=node, agent_instance=f"replay-{node}", sequence=seq, timestamp=_rfc3339(now))
    return json.dumps(doc).encode()


def least_allocated(node: Node) -> float:
    return 100.0 * (node.capacity - node.pods) / node.capacity


def place(nodes: list[Node], pods: int, scorer: NodeScorer | None, weight: float,
          window_seconds: float, t0: float, rng: random.Random,
          pods_per_step: int = 1) -> list[Node]:
    """Place ``pods`` pods one after another; returns the node of each. Every step of virtual
    time (one agent window) each node pushes its next report; ``pods_per_step`` pods arrive per
    step. ``scorer`` None: the baseline (LeastAllocated only)."""
    placed: list[Node] = []
    step = 0
    for n in nodes:
        n.pods = 0
    while len(placed) < pods:
        now = t0 + step * window_seconds
        if scorer is not None and getattr(scorer, "wants_reports", True):
            for n in (n for n in nodes if n.pushes_at(step)):
                scorer.receive(replayed_body(n.report_at(step), n.name, step + 1, now),
                               {"Content-Type": "application/json"}, now)
        for k in range(pods_per_step):
            if len(placed) >= pods:
                break
            free = [n for n in nodes if n.pods < n.capacity]
            if not free:
                raise ValueError(f"{pods} pods exceed the cluster's capacity")
            ext = (scorer.prioritize(_pod(len(placed)), [n.name for n in free], now + k * 0.01)
                   if scorer is not None else {})
            totals = {n.name: least_allocated(n) + weight * 10 * ext.get(n.name, 0.0) for n in free}
            top = max(totals.values())
            choice = rng.choice([n for n in free if totals[n.name] == top])
            choice.pods += 1
            placed.append(choice)
        step += 1
    return placed


def _pod(i: int) -> dict:
    return {"metadata": {"name": f"replay-pod-{i}", "namespace": "replay", "uid": f"replay-{i}"},
            "spec": {"containers": [{"name": "app", "resources": {"requests": {"cpu": "100m"}}}]}}


def outcome(placed: Sequence[Node], pools: Mapping[str, Sequence[Request]], per_pod: int,
            rng: random.Random) -> dict:
    """Each pod's ``per_pod`` requests drawn from its node's scenario's measured requests."""
    lat, errors = [], 0
    for n in placed:
        pool = pools[n.scenario]
        for r in rng.choices(pool, k=per_pod):
            lat.append(r.latency_ms)
            errors += not r.ok
    lat.sort()
    by = {}
    for n in placed:
        by[n.scenario] = by.get(n.scenario, 0) + 1
    return {"p99_ms": quantile(lat, 0.99), "p50_ms": quantile(lat, 0.5),
            "error_rate": errors / len(lat) if lat else None, "pods_per_scenario": by}


class OracleScorer:
    """Not a scheduler: the best any node ranking could do in the replay. It knows each node's
    *measured* client p99 (of its scenario's requests) and ranks by it, so the "oracle" result
    bounds what a score can gain in a mix (the healthy capacity is all there is to give)."""

    name = "oracle (measured client p99 per scenario)"
    wants_reports = False  # place() need not build the pushes it would ignore
    WEIGHT = 1000.0  # dominates LeastAllocated: fill the best-measured nodes first

    def __init__(self, p99_by_node: Mapping[str, float]) -> None:
        worst = max(p99_by_node.values()) or 1.0
        self.table = {n: 10.0 * (1.0 - v / worst) for n, v in p99_by_node.items()}

    def receive(self, body: bytes, headers: Mapping[str, str], now: float) -> None:
        pass

    def prioritize(self, pod: dict, nodes: Sequence[str], now: float) -> dict[str, float]:
        return {n: self.table[n] for n in nodes}


def pool_p99(pool: Sequence[Request]) -> float:
    return quantile(sorted(r.latency_ms for r in pool), 0.99) or 0.0


@dataclass
class MixResult:
    mix: str
    nodes: dict
    pods: int
    baseline: dict = field(default_factory=dict)
    extender: dict = field(default_factory=dict)
    oracle: dict = field(default_factory=dict)  # the bound: nodes ranked by their measured p99
    pushes: dict = field(default_factory=dict)  # the extender's answers to the replayed pushes


def _count_pushes(acc: dict, scorer) -> None:
    for k, v in getattr(scorer, "answers", {}).items():
        acc[k] = acc.get(k, 0) + v
    rejected = getattr(scorer, "rejected", [])
    if rejected:
        acc["rejected"] = acc.get("rejected", 0) + len(rejected)
        acc.setdefault("first_rejection", rejected[0][1].get("error"))


def replay_mix(mix: Mix, windows: Mapping[str, Sequence[Mapping]],
               pools: Mapping[str, Sequence[Request]], scorer_factory: Callable[[], NodeScorer],
               *, weight: float = 1.0, trials: int = 20, per_pod: int = 200, seed: int = 1,
               window_seconds: float = 3.0, t0: float = 1.7e9) -> MixResult:
    healthy = mix.nodes.get("baseline", 0) * mix.capacity
    degraded = sum(c for s, c in mix.nodes.items() if s != "baseline") * mix.capacity
    pods = mix.pods or healthy + degraded // 2
    res = MixResult(mix.name, dict(mix.nodes), pods)
    acc: dict[str, list[dict]] = {"baseline": [], "extender": [], "oracle": []}
    scen_p99 = {s: pool_p99(pools[s]) for s in mix.nodes}
    for trial in range(trials):
        rng = random.Random(seed * 1000 + trial)
        nodes = []
        for s, count in mix.nodes.items():
            for i in range(count):
                ws = windows[s]
                nodes.append(Node(f"{s.lower()}-{i}", s, mix.capacity, ws,
                                  offset=rng.randrange(len(ws))))
        rng.shuffle(nodes)  # node order must not decide ties
        oracle = OracleScorer({n.name: scen_p99[n.scenario] for n in nodes})
        for mode, scorer, w in (("baseline", None, 0.0), ("extender", scorer_factory(), weight),
                                ("oracle", oracle, OracleScorer.WEIGHT)):
            placed = place(nodes, pods, scorer, w, window_seconds, t0, random.Random(rng.random()))
            acc[mode].append(outcome(placed, pools, per_pod, random.Random(seed + trial)))
            if mode == "extender":
                _count_pushes(res.pushes, scorer)
    for mode in acc:
        runs = acc[mode]
        tot: dict[str, int] = {}
        for r in runs:
            for s, c in r["pods_per_scenario"].items():
                tot[s] = tot.get(s, 0) + c
        getattr(res, mode).update({
            "p99_ms": round(sum(r["p99_ms"] for r in runs) / len(runs), 3),
            "p50_ms": round(sum(r["p50_ms"] for r in runs) / len(runs), 3),
            "error_rate": round(sum(r["error_rate"] for r in runs) / len(runs), 5),
            "mean_pods_per_scenario": {s: round(c / len(runs), 2) for s, c in tot.items()},
        })
    b = res.baseline["p99_ms"]
    for r in (res.extender, res.oracle):
        r["p99_change"] = round((r["p99_ms"] - b) / b, 4) if b else None
    return res


def replay_run(reports: Sequence[Mapping], rows: Sequence[Mapping], *, seed: int = 1,
               min_purity: float = 0.75, weight: float = 1.0, trials: int = 20,
               requests: Sequence[Request] | None = None,
               scorer_factory: Callable[[], NodeScorer] = default_scorer,
               profile: str = "default",
               transform: Callable[[Mapping], Mapping] | None = None) -> dict:
    """The replay over one run: windows and request pools per phase from the joined rows.

    ``transform``: applied to every recorded report before it is replayed (the experiment's
    offline re-scoring under a named score profile, experiment/tuning.py); ``profile`` names it
    in the output."""
    if transform is not None:
        reports = [transform(r) for r in reports]
    by_seq = {r["sequence"]: r for r in reports}
    windows: dict[str, list[Mapping]] = {}
    pools: dict[str, list[Request]] = {}
    for row in rows:
        if row["purity"] < min_purity or row["sequence"] not in by_seq:
            continue
        windows.setdefault(row["phase"], []).append(by_seq[row["sequence"]])
    if requests is not None:
        for row in rows:
            if row["purity"] >= min_purity:
                pools.setdefault(row["phase"], []).extend(
                    requests_between(requests, row["t_start"], row["t_end"]))
    scorer = scorer_factory()
    win_s = float(reports[0]["push_interval_seconds"]) if reports else 3.0
    # the scorer's view of each recorded window on its own (the CSV's extender_score column)
    window_scores = {}
    for rep in reports:
        now = parse_time(rep["timestamp"])
        scorer.receive(json.dumps(dict(rep)).encode(), {"Content-Type": "application/json"}, now)
        window_scores[rep["sequence"]] = scorer.prioritize(_pod(0), [rep["node_name"]], now).get(rep["node_name"])
    out = {"scorer": scorer.name, "policy": getattr(scorer, "policy", None), "profile": profile,
           "weight": weight, "trials": trials, "window_scores": window_scores,
           "note": "a replay of measured windows through the scorer, not a live cluster"}
    if "baseline" not in windows or not pools:
        out["mixes"] = []
        out["skipped"] = "no baseline windows or no request pools"
        return out
    scenarios = [s for s in windows if s != "baseline" and s in pools]
    out["mixes"] = [vars(replay_mix(m, windows, pools, scorer_factory, weight=weight, trials=trials,
                                    seed=seed, window_seconds=win_s))
                    for m in default_mixes(scenarios)]
    return out
