"""ebpf-edge-extender: the reference kube-scheduler extender for ebpf-edge-agent's reports.

The command line: wiring only (config -> Extender -> HTTP server -> wait for a signal)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from extender import __version__
from extender.config import POLICIES, ConfigError, load_config

log = logging.getLogger("extender")

EPILOG = """\
  ebpf-edge-extender run --listen 0.0.0.0:8888 --policy node-score

Serves POST /metrics/report (the agents' pushes), POST /prioritize and /filter (kube-scheduler's
extender verbs), GET /metrics and /healthz. Every configuration key can also be set in the
--config YAML file or by EBPF_EDGE_EXTENDER_<KEY> (upper case); flags win. See docs/extender.md."""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ebpf-edge-extender", description=__doc__.splitlines()[0],
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--version", action="version", version=f"ebpf-edge-extender {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the extender")
    run.add_argument("--config", help="YAML file with any of the configuration keys")
    run.add_argument("--listen", help="HOST:PORT (default 0.0.0.0:8888)")
    run.add_argument("--policy", choices=POLICIES, help="scoring policy (default node-score)")
    run.add_argument("--ttl-factor", type=float, help="a report is fresh for this x its push interval")
    run.add_argument("--ttl-seconds", type=float, help="fixed TTL in seconds (overrides --ttl-factor)")
    run.add_argument("--token-file", help="require this bearer token on pushes")
    run.add_argument("--tls-cert-file", help="serve HTTPS with this certificate (with --tls-key-file)")
    run.add_argument("--tls-key-file")
    run.add_argument("--max-body-bytes", type=int, help="pushes above this get 413")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    run.add_argument("-v", action="store_true", help="debug logging")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = {k: getattr(args, k) for k in ("listen", "policy", "ttl_factor", "ttl_seconds",
                                           "token_file", "tls_cert_file", "tls_key_file",
                                           "max_body_bytes", "log_level")}
    if args.v:
        flags["log_level"] = "debug"
    try:
        cfg = load_config(args.config, flags=flags)
    except ConfigError as e:
        print(f"ebpf-edge-extender: invalid configuration: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, cfg.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from extender.app import Extender
    from extender.server import ExtenderServer

    ext = Extender(cfg)
    try:
        srv = ExtenderServer(ext, cfg.listen_host, cfg.listen_port)
    except OSError as e:
        print(f"ebpf-edge-extender: invalid configuration: listen: {cfg.listen!r} cannot be bound "
              f"({e.strerror})", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    srv.start()
    log.info("ebpf-edge-extender %s listening on %s (policy %s, TTL %s)", __version__, srv.url,
             cfg.policy, f"{cfg.ttl_seconds:g}s" if cfg.ttl_seconds else f"{cfg.ttl_factor:g} x push interval")
    stop.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
