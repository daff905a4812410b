"""What the agent's series cost a Prometheus: one node's exposition (110 pods, every per-pod
signal filled in, the default series budget) served as TARGETS distinct targets on loopback, a
real Prometheus scraping them; its head series and its memory after the head has them.

    .venv/bin/python -m bench.series_cost [--targets 40] [--seconds 60]

Prints series per node, Prometheus' resident memory and heap per head series, and the figures
extrapolated to 500 and 5,000 nodes (memory per series is roughly constant at these sizes;
samples per second follow from the scrape interval).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.e2e.agent_proc import Prometheus
from tests.unit.test_series_budget import exposition, full_report, series

SCRAPE = 15.0  # the shipped ServiceMonitor's interval


def _serve(body: bytes) -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def _own_metric(prom: Prometheus, name: str) -> float:
    """One of Prometheus' own metrics, from its /metrics."""
    from tests.e2e.agent_proc import http_get

    _, text = http_get(prom.base + "/metrics")
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise LookupError(name)


def measure(targets: int = 40, seconds: float = 60.0) -> dict:
    from agent.config import Config
    from agent.export.prometheus import ExportOptions

    text = exposition(full_report(110), ExportOptions.from_config(Config()))
    per_node = len(series(text))
    servers = [_serve(text.encode()) for _ in range(targets)]
    try:
        jobs = [{"job_name": "nodes", "scrape_interval": "5s",
                 "static_configs": [{"targets": [f"127.0.0.1:{s.server_address[1]}"
                                                 for s in servers]}]}]
        with Prometheus(scrape_configs=jobs, scrape_interval="5s") as prom:
            time.sleep(seconds)
            head = _own_metric(prom, "prometheus_tsdb_head_series")
            rss = _own_metric(prom, "process_resident_memory_bytes")
            heap = _own_metric(prom, "go_memstats_heap_inuse_bytes")
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
    out = {"series_per_node": per_node, "targets": targets, "head_series": head,
           "prometheus_rss_bytes": rss, "prometheus_heap_inuse_bytes": heap,
           "rss_bytes_per_series": rss / head if head else None,
           "heap_bytes_per_series": heap / head if head else None}
    for nodes in (500, 5000):
        n = nodes * per_node
        out[f"nodes_{nodes}"] = {"series": n, "samples_per_second": n / SCRAPE,
                                 "heap_gib": n * out["heap_bytes_per_series"] / 2**30}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--targets", type=int, default=40)
    ap.add_argument("--seconds", type=float, default=60.0)
    args = ap.parse_args()
    r = measure(args.targets, args.seconds)
    print(json.dumps(r, indent=1))
    print(f"\nseries per node (110 pods, defaults): {r['series_per_node']}")
    print(f"Prometheus with {r['targets']} such targets: {r['head_series']:.0f} head series, "
          f"heap in use {r['heap_bytes_per_series']:.0f} B/series, RSS {r['rss_bytes_per_series']:.0f} B/series")
    for nodes in (500, 5000):
        x = r[f"nodes_{nodes}"]
        print(f"{nodes} nodes: {x['series']:,} series, {x['samples_per_second']:,.0f} samples/s "
              f"at {SCRAPE:g} s, ~{x['heap_gib']:.1f} GiB heap")


if __name__ == "__main__":
    main()
