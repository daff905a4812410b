"""A stand-in agent for the operator tools' benchmark and tests: the real report builder, payload
and HTTP server (/report, /metrics, /readyz, /healthz) fed with fixture pods instead of probes
and cgroups, a new report every --interval seconds. Not a simulated agent shipped anywhere: it
lives in bench/ and serves only loopback.

    .venv/bin/python -m bench.fixture_agent --pods 200 --interval 1 [--port 0] [--skip 5,9]

Prints "listening on http://127.0.0.1:PORT" once serving; SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import signal
import sys
import threading
import time
from datetime import datetime, timezone

from agent.config import Config
from agent.model import NodeResources, ProbeState, ProbeStateKind
from agent.report import build_report
from agent.server import Server
from agent.service import Liveness, ReportBox, make_registry
from bench.report_cost import fixture


def pods_for(npods: int, seq: int, seed: int = 1):
    """The fixture pods with this window's varying figures (CPU, throttling, bytes)."""
    pods, snaps = fixture(npods, seed)
    r = random.Random(seq * 7919 + seed)
    out = []
    for p in pods:
        out.append(dataclasses.replace(
            p, cpu_used=round(r.random() * (p.cpu_limit or 1.0), 4),
            cpu_throttled_ratio=round(r.random() * 0.3, 4),
            net_rx_bytes=r.randrange(10 << 20), net_tx_bytes=r.randrange(10 << 20),
            net_seconds=1.0 + r.random() * 0.01, qos="burstable"))
    return out, snaps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=200)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--interval", type=float, default=1.0)
    ap.add_argument("--skip", default="", help="sequence numbers never published (a missed window)")
    ap.add_argument("--down", default="", help="probes reported down, comma-separated")
    args = ap.parse_args(argv)
    skip = {int(x) for x in args.skip.split(",") if x.strip()}
    down = {x.strip() for x in args.down.split(",") if x.strip()}
    cfg = Config(sample_interval=args.interval)
    box = ReportBox()
    stop = threading.Event()
    states = {}

    def publish(seq: int) -> None:
        nonlocal states
        pods, snaps = pods_for(args.pods, seq)
        states = {n: ProbeState(n, ProbeStateKind.DOWN, "fixture: reported down") if n in down
                  else ProbeState(n, ProbeStateKind.UP) for n in snaps}
        r = build_report(cfg, node_name="fixture-node", sequence=seq,
                         timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                         window_seconds=args.interval, states=states, windows=snaps,
                         cumulative=snaps, tcp_segments=(100_000 + seq, seq), pods=pods,
                         resources=NodeResources(8.0, 32 << 30, 0.4, 3.2, 10 << 30))
        box.publish(r)

    publish(1)
    srv = Server("127.0.0.1", args.port, make_registry(box, []), box.report, box.payload,
                 lambda: states, Liveness(box, sample_interval=args.interval, startup_grace=120))
    srv.start()
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    print(f"listening on http://127.0.0.1:{srv.port}", flush=True)
    seq = 1
    try:
        while not stop.wait(args.interval):
            seq += 1
            while seq in skip:
                seq += 1
            publish(seq)
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
