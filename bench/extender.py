"""The scheduler extender's costs (numbers, not tests): part of ``make bench``, or alone:

    .venv/bin/python -m bench.extender [--quick] [--json FILE]

1. ingestion: reports accepted per second on one core (the process pinned to one CPU): the
   JSON body decoded, its major version checked, validated against the schema and stored, as
   ``Extender.receive_report`` does for ``POST /metrics/report`` (HTTP parsing not included);
   reports of 30 pods, the agent's real payload shape.
2. prioritize latency with 5,000 fresh nodes: request bytes decoded, scored, answer encoded,
   for ``nodeCacheCapable: true`` (NodeNames) and false (full Node objects, ~4 KB each, what a
   real Node with a few images and conditions weighs).
3. RSS of an extender process holding 5,000 nodes' reports (a fresh child process).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "payload.json"


def make_report(node: str, pods: int = 30) -> dict:
    r = json.loads(GOLDEN.read_text())
    pod = copy.deepcopy(r["pods"][1])
    r["pods"] = []
    for i in range(pods):
        p = dict(pod, uid=f"{node}-pod-{i:03d}", pod=f"app-{i}", net_rx_bytes=12345 * i,
                 net_tx_bytes=23456 * i, rtt_p50_ms=0.5, rtt_p99_ms=2.5, rtt_samples=100)
        r["pods"].append(p)
    r["pod_uids"] = sorted(p["uid"] for p in r["pods"])
    r.update(node_name=node, agent_instance=f"inst-{node}", node_score=float(hash(node) % 100))
    return r


def templates(n: int, pods: int) -> list[bytes]:
    """One pre-encoded body per node with a %d placeholder for the sequence."""
    out = []
    for i in range(n):
        r = make_report(f"node-{i:05d}", pods)
        r["sequence"] = 999_999_999
        out.append(json.dumps(r).encode().replace(b"999999999", b"%d"))
    return out


def _pin() -> None:
    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass


def ingestion(nodes: int = 5000, pods: int = 30, seconds: float = 3.0) -> dict:
    from extender.app import Extender

    _pin()
    ext = Extender()
    tpl = templates(nodes, pods)
    seq = 1
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while time.perf_counter() < deadline:
        for body in tpl:
            code, doc = ext.receive_report(body % seq, {})
            if code != 200 or doc["status"] != "accepted":
                raise AssertionError((code, doc))
            n += 1
            if n % 500 == 0 and time.perf_counter() >= deadline:
                break
        seq += 1
    el = time.perf_counter() - t0
    return {"reports": n, "seconds": round(el, 2), "per_second": round(n / el),
            "body_bytes": len(tpl[0] % 1), "pods_per_report": pods, "target_per_second": 1000}


def _node_object(name: str) -> dict:
    return {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "123456",
                     "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                "kubernetes.io/arch": "amd64", "topology.kubernetes.io/zone": "zone-a",
                                "node.kubernetes.io/instance-type": "m5.xlarge"},
                     "annotations": {"node.alpha.kubernetes.io/ttl": "0",
                                     "volumes.kubernetes.io/controller-managed-attach-detach": "true"}},
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": f"aws:///zone-a/i-{name}"},
        "status": {
            "capacity": {"cpu": "4", "memory": "16Gi", "pods": "110", "example.com/SLO": "10G"},
            "allocatable": {"cpu": "3920m", "memory": "15Gi", "pods": "110", "example.com/SLO": "10G"},
            "conditions": [{"type": t, "status": "False", "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                            "lastTransitionTime": "2026-01-01T00:00:00Z", "reason": f"Kubelet{t}",
                            "message": f"kubelet has no {t}"}
                           for t in ("MemoryPressure", "DiskPressure", "PIDPressure", "Ready")],
            "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}, {"type": "Hostname", "address": name}],
            "nodeInfo": {"kubeletVersion": "v1.30.0", "containerRuntimeVersion": "containerd://1.7.0",
                         "kernelVersion": "6.1.0", "osImage": "Debian GNU/Linux 12", "architecture": "amd64",
                         "operatingSystem": "linux", "machineID": "0" * 32, "systemUUID": "0" * 32,
                         "bootID": "0" * 32, "kubeProxyVersion": "v1.30.0"},
            "images": [{"names": [f"registry.example.com/team/app-{i}@sha256:{'ab' * 32}",
                                  f"registry.example.com/team/app-{i}:v1.{i}"], "sizeBytes": 123456789}
                       for i in range(10)],
        },
    }


def prioritize(nodes: int = 5000, calls: int = 200, full_calls: int = 20) -> dict:
    from extender.app import Extender

    ext = Extender()
    names = [f"node-{i:05d}" for i in range(nodes)]
    for b in templates(nodes, 5):
        ext.receive_report(b % 1, {})
    pod = json.loads((ROOT / "tests" / "fixtures" / "extender" / "pod.json").read_text())
    out = {}
    for mode, args, n in (
            ("node_names", {"Pod": pod, "Nodes": None, "NodeNames": names}, calls),
            ("full_nodes", {"Pod": pod, "Nodes": {"apiVersion": "v1", "kind": "NodeList", "metadata": {},
                                                  "items": [_node_object(x) for x in names]},
                            "NodeNames": None}, full_calls)):
        raw = json.dumps(args).encode()
        ts, cold = [], []
        for i in range(n):
            if i % 10 == 0:  # every node's report replaced: the scores are computed afresh
                for e in ext.store.fresh_many(names).values():
                    e.scores.clear()
            t0 = time.perf_counter()
            answer = json.dumps(ext.prioritize(json.loads(raw))).encode()
            (cold if i % 10 == 0 else ts).append(time.perf_counter() - t0)
        assert json.loads(answer)[0]["Host"] == names[0] and len(json.loads(answer)) == nodes
        ts.sort()
        out[mode] = {"calls": n, "request_bytes": len(raw),
                     "p50_ms": round(statistics.median(ts) * 1000, 2),
                     "p99_ms": round(ts[min(len(ts) - 1, int(len(ts) * 0.99))] * 1000, 2),
                     "cold_median_ms": round(statistics.median(cold) * 1000, 2),
                     "cold_max_ms": round(max(cold) * 1000, 2)}
    out["nodes"] = nodes
    out["target_p99_ms"] = 20
    return out


def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_child(nodes: int, pods: int) -> None:
    from extender.app import Extender

    ext = Extender()
    before = _rss()
    for i in range(nodes):  # one body at a time: RSS is what the store holds, not the bench's input
        r = make_report(f"node-{i:05d}", pods)
        r["sequence"] = 1
        code, _ = ext.receive_report(json.dumps(r).encode(), {})
        assert code == 200
    import gc

    gc.collect()
    print(json.dumps({"rss_empty_bytes": before, "rss_bytes": _rss(), "nodes": len(ext.store)}))


def rss(nodes: int = 5000, pods: int = 30) -> dict:
    """RSS in a fresh process: after creating the Extender (with the bodies pre-encoded) and
    after ingesting every node (bodies dropped)."""
    p = subprocess.run([sys.executable, "-m", "bench.extender", "--rss-child", str(nodes), str(pods)],
                       capture_output=True, text=True, cwd=ROOT, check=True)
    d = json.loads(p.stdout.strip().splitlines()[-1])
    return {"nodes": d["nodes"], "pods_per_report": pods,
            "rss_mb": round(d["rss_bytes"] / 2**20, 1),
            "rss_empty_mb": round(d["rss_empty_bytes"] / 2**20, 1)}


def run(quick: bool = False) -> dict:
    return {"ingestion": ingestion(seconds=1.0 if quick else 3.0),
            "prioritize": prioritize(calls=50 if quick else 200, full_calls=5 if quick else 20),
            "rss": rss()}


def print_table(res: dict) -> None:
    ing, pr, rs = res["ingestion"], res["prioritize"], res["rss"]
    print("\n5. scheduler extender (in-process, one core)")
    print(f"   ingestion: {ing['per_second']} reports/s accepted (target >= {ing['target_per_second']}); "
          f"{ing['pods_per_report']} pods, {ing['body_bytes']} bytes per report; "
          f"{ing['reports']} in {ing['seconds']} s")
    print(f"   prioritize, {pr['nodes']} fresh nodes (decode + score + encode):")
    print(f"   {'mode':<40} {'request':>9} {'p50 ms':>7} {'p99 ms':>7} {'cold ms':>8} {'cold max':>8}")
    for mode, label in (("node_names", "nodeCacheCapable: true (NodeNames)"),
                        ("full_nodes", "nodeCacheCapable: false (Node objects)")):
        m = pr[mode]
        print(f"   {label:<40} {m['request_bytes'] / 2**20:>7.2f}MB {m['p50_ms']:>7} {m['p99_ms']:>7} "
              f"{m['cold_median_ms']:>8} {m['cold_max_ms']:>8}")
    print(f"   (target p99 <= {pr['target_p99_ms']} ms with NodeNames; cold: the first call after every "
          "node's report was replaced, scores computed afresh; the others reuse each report's score)")
    print(f"   RSS with {rs['nodes']} nodes' reports ({rs['pods_per_report']} pods each): {rs['rss_mb']} MB "
          f"({rs['rss_empty_mb']} MB before the first report)")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        rss_child(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    res = run(args.quick)
    print_table(res)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
