"""Cost of one sampling cycle's pure part (building the report) and of a /metrics scrape, at
several pod counts, from fixture data (no kernel).

    .venv/bin/python -m bench.report_cost [--pods 0,200,1000] [--scrapes 200]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
import urllib.request

from agent.config import Config
from agent.model import Histogram, NodeResources, PodSample, ProbeSnapshot, ProbeState, ProbeStateKind
from agent.report import build_report
from agent.server import Server
from agent.service import Liveness, ReportBox, make_registry
from agent.stats.histogram import SlotLayout

RTT = SlotLayout(5, 21)
RQ = SlotLayout(5, 30)


def fixture(npods: int, seed: int = 1):
    r = random.Random(seed)
    pods, hists, retrans = [], {}, {}
    for i in range(npods):
        addr = f"10.{i // 250}.{i % 250}.{1 + i % 7}"
        pods.append(PodSample(f"uid-{i:05d}", f"ns-{i % 20}", f"pod-{i}", f"ns-{i % 20}",
                              cpu_used=r.random(), cpu_limit=1.0, memory_used=r.randrange(1 << 30),
                              memory_limit=1 << 31, addresses=(addr,)))
        counts = {RTT.slot_of(int(r.lognormvariate(7, 1))): r.randrange(1, 50) for _ in range(30)}
        hists[addr] = Histogram(RTT, counts, sum(counts.values()) * 1000)
        retrans[addr] = r.randrange(5)
    rq = {RQ.slot_of(int(r.lognormvariate(10, 2))): r.randrange(1, 500) for _ in range(300)}
    snaps = {
        "tcp_rtt": ProbeSnapshot("tcp_rtt", "us", 0, hists=hists),
        "tcp_retrans": ProbeSnapshot("tcp_retrans", "", 0, counts=retrans),
        "skb_drop": ProbeSnapshot("skb_drop", "", 0, counts={"NO_SOCKET": 5, "QDISC_DROP": 2}),
        "runqlat": ProbeSnapshot("runqlat", "ns", 0, hists={"": Histogram(RQ, rq, 10**9)}),
    }
    return pods, snaps


def measure(npods: int, scrapes: int) -> dict:
    cfg = Config()
    pods, snaps = fixture(npods)
    states = {n: ProbeState(n, ProbeStateKind.UP) for n in snaps}
    res = NodeResources(8.0, 32 << 30, 0.4, 3.2, 10 << 30)

    def build(seq):
        return build_report(cfg, node_name="n", sequence=seq, timestamp="2026-01-01T00:00:00Z",
                            window_seconds=10, states=states, windows=snaps, cumulative=snaps,
                            tcp_segments=(1000, 3), resources=res, pods=pods)

    cpu0 = time.process_time()
    n = 20
    for i in range(n):
        report = build(i + 1)
    build_cpu_ms = (time.process_time() - cpu0) / n * 1000
    box = ReportBox()
    box.publish(report)
    srv = Server("127.0.0.1", 0, make_registry(box, []), box.report, box.payload, lambda: states,
                 Liveness(box, sample_interval=10, startup_grace=120))
    srv.start()
    lat = []
    body = b""
    try:
        for _ in range(scrapes):
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/metrics") as r:
                body = r.read()
            lat.append(time.perf_counter() - t0)
    finally:
        srv.stop()
    series = sum(1 for ln in body.decode().splitlines() if ln and not ln.startswith("#"))
    lat.sort()
    return {"pods": npods, "build_cpu_ms": round(build_cpu_ms, 2),
            "scrape_p50_ms": round(statistics.median(lat) * 1000, 2),
            "scrape_p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * 1000, 2),
            "series": series, "bytes": len(body),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", default="0,200,1000")
    ap.add_argument("--scrapes", type=int, default=200)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = [measure(int(n), args.scrapes) for n in args.pods.split(",")]
    print(f"{'pods':>5} {'build cpu ms':>13} {'scrape p50 ms':>14} {'scrape p99 ms':>14} "
          f"{'series':>7} {'bytes':>8} {'max rss MB':>11}")
    for r in rows:
        print(f"{r['pods']:>5} {r['build_cpu_ms']:>13} {r['scrape_p50_ms']:>14} "
              f"{r['scrape_p99_ms']:>14} {r['series']:>7} {r['bytes']:>8} {r['max_rss_mb']:>11}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
