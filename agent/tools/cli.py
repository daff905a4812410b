"""The operator tools' subcommands: their parsers (help text with an example each) and
dispatch. agent/cli.py only calls :func:`add_parsers` and :func:`dispatch`."""

from __future__ import annotations

import argparse
import re
import sys

from agent.tools import client

COMMANDS = ("status", "top", "measure", "record")


def _size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]i?B?|B)?\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 65536, 100M, 1G)")
    mult = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[(m.group(2) or "")[:1].lower()]
    v = int(m.group(1)) * mult
    if v < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: at least 1024 bytes")
    return v


def _positive(kind):
    def conv(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"{text!r}: must be positive")
        return v
    return conv


def _share(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= v < 0.5:
        raise argparse.ArgumentTypeError(f"{text!r}: a share in [0, 0.5) cut from each side (0.1 = 10 %)")
    return v


def _url_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=None,
                   help="the agent's base URL (default: the configured listen address, a wildcard "
                        "one reached on 127.0.0.1)")
    p.add_argument("--timeout", type=_positive(float), default=client.DEFAULT_TIMEOUT,
                   help=f"seconds per HTTP request (default {client.DEFAULT_TIMEOUT:g})")


def add_parsers(sub, common: argparse.ArgumentParser, fmt) -> None:
    st = sub.add_parser(
        "status", parents=[common], formatter_class=fmt,
        help="is the running agent healthy: probes, report age, push, pods, RSS",
        description="Read the running agent (/report, /readyz, /metrics) and say whether it is "
                    "healthy: every probe up or unsupported (with its reason), the newest report "
                    "fresh (younger than 3 x sample_interval), and where push is configured each "
                    "endpoint's last delivery within 3 x push_interval. Also shows the report's "
                    "age and sequence, the pods covered and the agent's RSS.",
        epilog="exit status: 0 healthy, 1 unhealthy, 2 the agent could not be read\n"
               "example:\n"
               "  kubectl exec -n ebpf-edge-agent ds/ebpf-edge-agent -- ebpf-edge-agent status\n"
               "  ebpf-edge-agent status --url http://127.0.0.1:9810 --json")
    _url_arg(st)
    st.add_argument("--json", action="store_true", help="print one JSON document")

    tp = sub.add_parser(
        "top", parents=[common], formatter_class=fmt,
        help="live full-screen view of the node and its pods, from /report",
        description="A full-screen view refreshed every window from the running agent's /report "
                    "(it never loads a probe): a node line (score, RTT p50/p99, retransmit rate, "
                    "drops by top reasons, run-queue latency p95, CPU) and one row per pod with "
                    "every per-pod figure the report has. Keys: c CPU, m memory, r RTT p99, "
                    "t retransmits, n name (again: reverse), < > previous/next column, i reverse, "
                    "/ namespace filter (Enter applies, empty shows all), q quit. When stdout is "
                    "not a terminal it prints the table once per window instead.",
        epilog="example:\n"
               "  ebpf-edge-agent top\n"
               "  ebpf-edge-agent top --namespace team-a --sort r\n"
               "  ebpf-edge-agent top --count 3 > windows.txt     (plain tables, 3 windows)")
    _url_arg(tp)
    tp.add_argument("--sort", default="c",
                    help="c cpu (default), m memory, r RTT p99, t retransmits, n name, or a pod "
                         "field's name")
    tp.add_argument("--namespace", default="", help="show only pods whose namespace contains this")
    tp.add_argument("--interval", type=_positive(float), default=None,
                    help="seconds between refreshes (default: the report's window)")
    tp.add_argument("--count", type=_positive(int), default=None,
                    help="plain mode: stop after this many windows (default: until interrupted)")
    tp.add_argument("--plain", action="store_true",
                    help="plain repeated tables even on a terminal")

    ms = sub.add_parser(
        "measure", parents=[common], formatter_class=fmt,
        help="seed 003's cgroup v2 CPU/memory measurement of a pod or cgroup",
        description="Sample a pod's (or a cgroup's) cgroup v2 CPU (cpu.stat usage) and memory "
                    "(memory.current and the working set) N times at an interval, per container, "
                    "with each container's state (running; completed when the Kubernetes API says "
                    "so; else gone), and report the trimmed mean with min, max and spread. "
                    "--compare BEFORE.json AFTER.json prints the change of the totals as seed "
                    "003's comparison does. Reads files only: no agent needed.",
        epilog="examples:\n"
               "  ebpf-edge-agent measure --pod 0a1b2c3d-1111-4222-8333-444455556666 --json > before.json\n"
               "  ebpf-edge-agent measure --pod team-a/trainer-0 --samples 20 --interval 1 --json > after.json\n"
               "  ebpf-edge-agent measure --cgroup system.slice/nginx.service\n"
               "  ebpf-edge-agent measure --compare before.json after.json   # e.g. CPU \u221228.0 %")
    who = ms.add_mutually_exclusive_group(required=True)
    who.add_argument("--pod", help="pod UID, or NAMESPACE/NAME (needs the Kubernetes API)")
    who.add_argument("--cgroup", help="a cgroup path relative to the cgroup v2 root (or absolute)")
    who.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"),
                     help="two 'measure --json' documents: print the reductions")
    ms.add_argument("--samples", type=_positive(int), default=20, help="samples (default 20)")
    ms.add_argument("--interval", type=_positive(float), default=1.0,
                    help="seconds between samples (default 1)")
    ms.add_argument("--trim", type=_share, default=0.10,
                    help="share of samples cut from each side for the trimmed mean (default 0.10)")
    ms.add_argument("--json", action="store_true", help="print one JSON document")

    rc = sub.add_parser(
        "record", parents=[common], formatter_class=fmt,
        help="DepCon2's training rows: one CSV row per pod per window",
        description="Write one CSV row per pod per window of the running agent (time, pod, CPU "
                    "quota, CPU used, throttled share, bytes sent/received per second, RTT p50/p99, "
                    "retransmits), appending to FILE and rotating it at a size. A missed window "
                    "(a jump in the report's sequence) or a new agent instance is written as a "
                    "'gap' row. SIGINT/SIGTERM stop it between windows: no torn row.",
        epilog="example:\n"
               "  ebpf-edge-agent record --out /var/tmp/depcon2.csv --rotate-bytes 100M --keep 5")
    _url_arg(rc)
    rc.add_argument("--out", required=True, metavar="FILE", help="the CSV file (appended to)")
    rc.add_argument("--rotate-bytes", type=_size, default=64 << 20,
                    help="rotate FILE to FILE.1 once it has this size (default 64M)")
    rc.add_argument("--keep", type=_positive(int), default=5, help="old files kept (default 5)")
    rc.add_argument("--windows", type=_positive(int), default=None,
                    help="stop after this many windows (default: until stopped)")


def dispatch(args: argparse.Namespace, config) -> int:
    cmd = args.command
    if cmd == "measure":
        from agent.tools import measure

        err = lambda m: print(m, file=sys.stderr)  # noqa: E731
        if args.compare:
            return measure.run_compare(*args.compare, err=err)
        return measure.run(config, pod=args.pod, cgroup=args.cgroup, samples=args.samples,
                           interval=args.interval, trim=args.trim, as_json=args.json, err=err)
    try:
        url = client.normalize_url(args.url) if args.url else client.base_url(config.listen)
    except ValueError as e:
        print(f"ebpf-edge-agent {cmd}: {e}", file=sys.stderr)
        return 2
    if cmd == "status":
        from agent.tools import status

        return status.run(url, as_json=args.json, timeout=args.timeout)
    if cmd == "top":
        from agent.tools import top

        return top.run(url, interval=args.interval, sort=args.sort, namespace=args.namespace,
                       count=args.count, plain=True if args.plain else None, timeout=args.timeout)
    if cmd == "record":
        from agent.tools import record

        return record.run(url, args.out, rotate_bytes=args.rotate_bytes, keep=args.keep,
                          max_windows=args.windows, timeout=args.timeout)
    return 2
