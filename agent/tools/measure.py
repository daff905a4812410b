"""``ebpf-edge-agent measure``: seed 003's measurement method, on this node's cgroup v2 files.

A pod's (``--pod UID`` or ``--pod NAMESPACE/NAME`` with the Kubernetes API) or any cgroup's
(``--cgroup PATH``) CPU and memory are sampled N times (default 20) at an interval: N + 1 reads
of ``cpu.stat`` make N CPU samples (Δusage_usec / Δt, cores), each read after the first gives a
memory sample (``memory.current``, and the working set ``memory.current - inactive_file`` as the
kubelet counts it). The pod-level (or the given) cgroup is the total; each child cgroup is a
container (for a pod: the cgroups the container-id naming rules recognise).

Each container's state: ``running`` when its cgroup is there at the last read; when it is not,
``completed`` if the Kubernetes API says the container terminated, else ``gone``.

Each figure is reported as the trimmed mean (``--trim``, default 10 % of the samples dropped at
each side: floor(trim x N) lowest and highest, as scipy's trim_mean does) with min, max and
spread (max - min). ``--compare BEFORE.json AFTER.json`` prints the change of the totals as seed
003's comparison does ("CPU -28.0 %": AFTER used 28 % less than BEFORE).

Where the host's cgroup v2 has no memory controller (the hybrid layout of the development
machine), memory is reported as not available -- never as 0.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from agent import __version__
from agent.cgroups.identity import identify_cgroup
from agent.cgroups.model import CgroupSample
from agent.cgroups.read import CgroupReader

DEFAULT_SAMPLES = 20
DEFAULT_TRIM = 0.10


# ---------------------------------------------------------------------------------------------
# pure statistics


def trimmed_mean(values: Sequence[float], trim: float) -> float:
    """Mean after dropping floor(trim x n) values at each end of the sorted values."""
    if not 0 <= trim < 0.5:
        raise ValueError(f"trim {trim!r}: a share in [0, 0.5) cut from each side")
    if not values:
        raise ValueError("trimmed mean of no values")
    xs = sorted(values)
    k = int(math.floor(trim * len(xs) + 1e-9))
    kept = xs[k:len(xs) - k]
    return sum(kept) / len(kept)


def summarize(values: Sequence[float | None], trim: float) -> dict[str, Any] | None:
    """Trimmed mean, min, max, spread and the samples; None when no sample is available."""
    xs = [v for v in values if v is not None]
    if not xs:
        return None
    return {"trimmed_mean": trimmed_mean(xs, trim), "min": min(xs), "max": max(xs),
            "spread": max(xs) - min(xs), "n": len(xs), "values": xs}


def change_percent(before: float, after: float) -> float:
    """(after - before) / before x 100; ValueError when ``before`` is 0."""
    if before == 0:
        raise ValueError("the BEFORE figure is 0: no relative change")
    return (after - before) / before * 100.0


# ---------------------------------------------------------------------------------------------
# targets: which cgroups are sampled


@dataclass(frozen=True)
class Member:
    key: str  # "total" or the child cgroup's directory name
    path: str  # relative to the cgroup root
    container_id: str | None = None
    name: str | None = None  # the container's name from the Kubernetes API


@dataclass(frozen=True)
class Target:
    kind: str  # "pod" or "cgroup"
    path: str  # the pod-level (or given) cgroup, relative to the root
    pod_uid: str | None = None
    pod_name: str | None = None  # NAMESPACE/NAME where known


def find_pod_path(root: str, uid: str) -> str | None:
    """The pod-level cgroup of pod ``uid`` below ``root`` (either kubelet cgroup driver)."""
    uid = uid.lower()
    for rel, ident in CgroupReader(root)._pod_dirs():  # noqa: SLF001 - the walk the agent uses
        if ident.pod_uid == uid:
            return rel
    return None


def resolve_cgroup(root: str, path: str) -> str:
    """``--cgroup PATH`` relative to ``root`` (an absolute path must lie below it)."""
    root = os.path.realpath(root)
    p = path
    if os.path.isabs(p):
        real = os.path.realpath(p)
        if real != root and not real.startswith(root + "/"):
            raise ValueError(f"--cgroup {path!r} is not below the cgroup root {root}")
        p = os.path.relpath(real, root)
        p = "" if p == "." else p
    p = p.strip("/")
    if ".." in p.split("/"):
        raise ValueError(f"--cgroup {path!r}: '..' is not allowed")
    full = os.path.join(root, p) if p else root
    if not os.path.isfile(os.path.join(full, "cgroup.procs")):
        raise ValueError(f"--cgroup {path!r}: {full} is not a cgroup v2 directory (no cgroup.procs)")
    return p


def members(root: str, target: Target, names: Mapping[str, str] | None = None) -> list[Member]:
    """The total and the containers (child cgroups) of ``target`` now."""
    out = [Member("total", target.path)]
    full = os.path.join(root, target.path) if target.path else root
    try:
        with os.scandir(full) as it:
            children = sorted(e.name for e in it if e.is_dir(follow_symlinks=False))
    except OSError:
        children = []
    for c in children:
        rel = f"{target.path}/{c}" if target.path else c
        cid = None
        if target.kind == "pod":
            ident = identify_cgroup(rel)
            if ident is None or ident.is_pod:
                continue  # crio-conmon and other non-containers
            cid = ident.container_id
        out.append(Member(c, rel, cid, (names or {}).get(cid or "")))
    return out


# ---------------------------------------------------------------------------------------------
# container state from the Kubernetes API (pure)


def api_container_states(pod: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """container id (no runtime prefix) -> {"name", "state"} from a Pod object's statuses;
    state is "running", "terminated" (with the reason) or "waiting"."""
    out: dict[str, dict[str, str]] = {}
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            if not isinstance(cs, dict):
                continue
            cid = cs.get("containerID")
            if not isinstance(cid, str) or not cid:
                continue
            st = cs.get("state") or {}
            kind = next((k for k in ("running", "terminated", "waiting") if k in st), "unknown")
            entry = {"name": str(cs.get("name", "")), "state": kind}
            if kind == "terminated":
                entry["reason"] = str((st.get("terminated") or {}).get("reason", ""))
            out[cid.split("://", 1)[-1].lower()] = entry
    return out


def container_state(present_at_end: bool, api: Mapping[str, str] | None) -> str:
    """running | completed | gone (pure; seed 003's states)."""
    if present_at_end:
        return "running"
    if api is not None and api.get("state") == "terminated":
        return "completed"
    return "gone"


# ---------------------------------------------------------------------------------------------
# sampling


@dataclass
class Series:
    member: Member
    cpu: list[float | None] = field(default_factory=list)
    memory: list[float | None] = field(default_factory=list)
    working_set: list[float | None] = field(default_factory=list)
    present_at_end: bool = False
    seen: int = 0


def cpu_between(prev: CgroupSample | None, cur: CgroupSample | None) -> float | None:
    """Cores used between two reads of one cgroup; None when either read lacks cpu.stat or
    the counter went back (the cgroup was made anew)."""
    if prev is None or cur is None or prev.cpu_stat is None or cur.cpu_stat is None:
        return None
    dt = cur.taken_at - prev.taken_at
    if not dt > 0 or cur.cpu_stat.usage_usec < prev.cpu_stat.usage_usec:
        return None
    return (cur.cpu_stat.usage_usec - prev.cpu_stat.usage_usec) / 1e6 / dt


def sample(read: Callable[[Member], CgroupSample | None], found: Callable[[], list[Member]],
           n: int, interval: float, *, sleep: Callable[[float], None] = time.sleep,
           on_read: Callable[[int], None] | None = None) -> dict[str, Series]:
    """n + 1 read rounds ``interval`` apart. ``found`` lists the members now (containers that
    appear later are picked up); ``read`` reads one member (None: its cgroup is gone)."""
    if n < 1:
        raise ValueError(f"--samples {n!r}: at least 1")
    if not interval > 0:
        raise ValueError(f"--interval {interval!r}: must be positive")
    series: dict[str, Series] = {}
    prev: dict[str, CgroupSample | None] = {}
    for i in range(n + 1):
        if i:
            sleep(interval)
        now_members = {m.key: m for m in found()}
        for key, m in now_members.items():
            series.setdefault(key, Series(m))
        cur: dict[str, CgroupSample | None] = {}
        for key, s in series.items():
            r = read(s.member)
            cur[key] = r
            s.present_at_end = r is not None
            if r is not None:
                s.seen += 1
            if i:
                s.cpu.append(cpu_between(prev.get(key), r))
                s.memory.append(None if r is None else r.memory_current)
                s.working_set.append(None if r is None else r.working_set_bytes)
        prev = cur
        if on_read is not None:
            on_read(i)
    return series


def build_doc(target: Target, root: str, series: Mapping[str, Series], *, n: int, interval: float,
              trim: float, started: float, elapsed: float,
              api: Mapping[str, Mapping[str, str]] | None) -> dict[str, Any]:
    """Pure: the JSON document of one measurement."""
    def entry(s: Series) -> dict[str, Any]:
        m = s.member
        e: dict[str, Any] = {"key": m.key, "path": m.path}
        if m.key != "total":
            a = (api or {}).get(m.container_id or "") if api is not None else None
            e.update({"container_id": m.container_id, "name": m.name or (a or {}).get("name"),
                      "state": container_state(s.present_at_end, a)})
        e.update({"reads": s.seen,
                  "cpu_cores": summarize(s.cpu, trim),
                  "memory_bytes": summarize(s.memory, trim),
                  "memory_working_set_bytes": summarize(s.working_set, trim)})
        return e

    total = series.get("total")
    doc: dict[str, Any] = {
        "tool": "ebpf-edge-agent measure", "agent_version": __version__,
        "target": {"kind": target.kind, "path": target.path, "pod_uid": target.pod_uid,
                   "pod": target.pod_name},
        "cgroup_root": root, "samples": n, "interval_seconds": interval, "trim": trim,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "elapsed_seconds": round(elapsed, 3),
        "kubernetes_api": api is not None,
        "total": entry(total) if total is not None else None,
        "containers": [entry(s) for k, s in sorted(series.items()) if k != "total"],
    }
    # containers the API knows that never had a cgroup here (completed before the first read)
    if api:
        seen = {s.member.container_id for s in series.values()}
        for cid, a in sorted(api.items()):
            if cid not in seen and a.get("state") == "terminated":
                doc["containers"].append({"key": cid[:12], "path": None, "container_id": cid,
                                          "name": a.get("name"), "state": "completed", "reads": 0,
                                          "cpu_cores": None, "memory_bytes": None,
                                          "memory_working_set_bytes": None})
    return doc


# ---------------------------------------------------------------------------------------------
# rendering and comparison (pure)


def _mc(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.1f}m"


def _mb(v: float | None) -> str:
    return "n/a" if v is None else f"{v / 1e6:.1f}MB"


def render(doc: Mapping[str, Any]) -> str:
    t = doc["target"]
    what = t.get("pod") or t.get("pod_uid") or t["path"] or "/"
    lines = [f"{t['kind']} {what}  ({doc['cgroup_root']}/{t['path']})",
             f"{doc['samples']} samples every {doc['interval_seconds']:g}s over "
             f"{doc['elapsed_seconds']:.1f}s, trimmed mean dropping {doc['trim'] * 100:g} % each side"]
    head = f"{'':<24} {'state':<10} {'CPU mean':>9} {'min':>8} {'max':>8} {'spread':>8}  " \
           f"{'MEM mean':>9} {'min':>8} {'max':>8} {'spread':>8}"
    lines.append(head)
    rows = ([doc["total"]] if doc.get("total") else []) + list(doc["containers"])
    for e in rows:
        c, m = e.get("cpu_cores") or {}, e.get("memory_bytes") or {}
        label = "TOTAL" if e["key"] == "total" else (e.get("name") or e["key"])[:24]
        lines.append(f"{label:<24} {e.get('state', ''):<10} {_mc(c.get('trimmed_mean')):>9} "
                     f"{_mc(c.get('min')):>8} {_mc(c.get('max')):>8} {_mc(c.get('spread')):>8}  "
                     f"{_mb(m.get('trimmed_mean')):>9} {_mb(m.get('min')):>8} {_mb(m.get('max')):>8} "
                     f"{_mb(m.get('spread')):>8}")
    tot = doc.get("total") or {}
    if tot.get("reads") and tot.get("memory_bytes") is None:
        lines.append("memory: n/a -- no memory.current here (this cgroup v2 hierarchy has no "
                     "memory controller)")
    return "\n".join(lines)


def load_doc(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("tool") != "ebpf-edge-agent measure" or "total" not in doc:
        raise ValueError(f"{path}: not a document written by 'measure --json'")
    return doc


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Seed 003's comparison of two measurements' totals: one line per figure."""
    def mean(doc, figure):
        e = (doc.get("total") or {}).get(figure)
        return None if e is None else e["trimmed_mean"]

    lines = []
    for label, figure, fmt in (("CPU", "cpu_cores", _mc), ("Memory", "memory_bytes", _mb),
                               ("Memory working set", "memory_working_set_bytes", _mb)):
        b, a = mean(before, figure), mean(after, figure)
        if b is None or a is None:
            side = "BEFORE" if b is None else "AFTER"
            lines.append(f"{label} n/a (not measured in {side})")
            continue
        try:
            pct = change_percent(b, a)
        except ValueError as e:
            lines.append(f"{label} n/a ({e})")
            continue
        sign = "\u2212" if pct < 0 else "+"
        lines.append(f"{label} {sign}{abs(pct):.1f} % ({fmt(b)} -> {fmt(a)})")
    return lines


# ---------------------------------------------------------------------------------------------
# the command


def kube_pod(config, namespace: str, name: str) -> dict[str, Any]:
    """GET the Pod object from the API the agent's configuration points at."""
    import requests

    from agent.kube import ApiEndpoint, in_cluster_endpoint

    if config.kubernetes_api_url:
        ep = ApiEndpoint(base_url=config.kubernetes_api_url.rstrip("/"))
    else:
        ep = in_cluster_endpoint()
    url = f"{ep.base_url}/api/v1/namespaces/{namespace}/pods/{name}"
    try:
        r = requests.get(url, headers=ep.headers(), verify=ep.verify, timeout=10)
    except (requests.RequestException, OSError) as e:
        raise ValueError(f"kubernetes: GET pod {namespace}/{name}: {e}") from None
    if r.status_code != 200:
        raise ValueError(f"kubernetes: GET pod {namespace}/{name}: HTTP {r.status_code}: {r.text[:200]}")
    return r.json()


def run(config, *, pod: str | None, cgroup: str | None, samples: int, interval: float, trim: float,
        as_json: bool, out=print, err=print, sleep=time.sleep) -> int:
    from agent.cgroups.read import read_cgroup2_root

    if not 0 <= trim < 0.5:
        err(f"measure: --trim {trim!r}: a share in [0, 0.5) cut from each side (0.1 = 10 %)")
        return 2
    if samples < 1 or not interval > 0:
        err("measure: --samples must be >= 1 and --interval > 0")
        return 2
    root = config.cgroup_root or read_cgroup2_root(mounts_path=str(config.proc_root / "self" / "mounts"))
    if root is None:
        err("measure: no cgroup v2 hierarchy found (set cgroup_root)")
        return 2
    api_pod = None
    try:
        if cgroup is not None:
            target = Target("cgroup", resolve_cgroup(root, cgroup))
        else:
            uid, pod_name = pod, None
            if "/" in pod:
                ns, name = pod.split("/", 1)
                if config.kubernetes == "off":
                    raise ValueError(f"--pod {pod!r}: a NAMESPACE/NAME needs the Kubernetes API "
                                     "(kubernetes is off); give the pod's UID instead")
                api_pod = kube_pod(config, ns, name)
                uid, pod_name = api_pod["metadata"]["uid"], pod
            path = find_pod_path(root, uid)
            if path is None:
                raise ValueError(f"--pod {pod!r}: no cgroup of pod uid {uid} below {root}")
            target = Target("pod", path, uid, pod_name)
    except ValueError as e:
        err(f"measure: {e}")
        return 2
    api = api_container_states(api_pod) if api_pod is not None else None
    names = {cid: a["name"] for cid, a in (api or {}).items()}
    reader = CgroupReader(root)

    def read(m: Member) -> CgroupSample | None:
        return reader.read_one(m.path, None)

    started, t0 = time.time(), time.monotonic()
    series = sample(read, lambda: members(root, target, names), samples, interval, sleep=sleep)
    elapsed = time.monotonic() - t0
    if api_pod is not None:  # states as the API sees them at the end
        try:
            api = api_container_states(kube_pod(config, *pod.split("/", 1)))
        except ValueError as e:
            err(f"measure: kubernetes: {e} (states from the first answer)")
    doc = build_doc(target, root, series, n=samples, interval=interval, trim=trim, started=started,
                    elapsed=elapsed, api=api)
    out(json.dumps(doc, indent=1) if as_json else render(doc))
    return 0


def run_compare(before_path: str, after_path: str, out=print, err=print) -> int:
    try:
        before, after = load_doc(before_path), load_doc(after_path)
    except ValueError as e:
        err(f"measure --compare: {e}")
        return 2
    for line in compare(before, after):
        out(line)
    return 0
