"""Command line: wiring only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading

from agent import __version__
from agent.config import ConfigError, Config, load_config, service_links
from agent.kernel import KernelInfo, detect, enable_bpf_stats

log = logging.getLogger("agent")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _kernel(config: Config) -> KernelInfo:
    return detect(config.tracefs_roots, config.btf_path, config.modules_root, config.proc_root)


def _make_probes(config: Config, kernel: KernelInfo):
    from agent.service import build_probes

    return build_probes(config, kernel)


# ---------------------------------------------------------------------------------------------
# check-kernel


def _bcc_importable() -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401  (the distribution's python3-bpfcc)
    except ImportError as e:
        return False, f"no ({e}; install python3-bpfcc)"
    return True, f"yes ({os.path.dirname(bcc.__file__)})"


def check_kernel(config: Config) -> tuple[list[tuple[str, str]], bool, dict]:
    """Lines (feature, finding), whether at least one probe can run, and the same as a dict."""
    from agent.probes.base import ProbeUnsupported

    k = _kernel(config)
    bcc_ok, bcc_text = _bcc_importable()
    lines: list[tuple[str, str]] = [
        ("kernel", k.release),
        ("tracefs", str(k.tracefs) if k.tracefs else "not mounted (mount -t tracefs nodev /sys/kernel/tracing)"),
        ("btf", str(k.btf_path) if k.btf_path else "absent"),
        ("kernel headers", k.headers.describe()),
        ("bcc python module", bcc_text),
        ("bpf permission", "yes" if k.bpf_permitted else f"no: {k.bpf_permission_detail}"),
        ("cgroup v2", ", ".join(k.cgroup2_mounts) or "not mounted"),
        ("kprobes", "yes" if k.kprobes else "no (not needed: every probe uses tracepoints)"),
        ("bpf_stats_enabled", {True: "on", False: "off", None: "unknown"}[k.bpf_stats_enabled]),
    ]
    for tp, fmt in k.formats.items():
        if fmt is None:
            lines.append((f"tracepoint {tp}", "absent"))
        else:
            names = [f for f in fmt.fields if not f.startswith("common_")]
            lines.append((f"tracepoint {tp}", "yes: " + " ".join(names)))
    kfree = k.tracepoint("skb:kfree_skb")
    if kfree is not None and kfree.has("reason"):
        lines.append(("drop reasons", f"{len(k.drop_reasons.names)} names from {k.drop_reasons.source}"))
    elif kfree is not None:
        lines.append(("drop reasons", "no reason field on this kernel: drops counted as 'unknown'"))
    runnable = 0
    probes = {}
    for probe in _make_probes(config, k):
        try:
            probe.check_supported()
        except ProbeUnsupported as e:
            verdict, ok = f"unsupported: {e}", False
        else:
            problems = []
            if not bcc_ok:
                problems.append("bcc not importable")
            if not k.bpf_permitted:
                problems.append("no permission to load BPF")
            if k.headers.kind == "none":
                problems.append(f"no kernel headers at {k.headers.path} (run make dev-setup)")
            ok = not problems
            verdict = "can run" if ok else "cannot run: " + "; ".join(problems)
        runnable += ok
        probes[probe.name] = {"can_run": ok, "detail": verdict}
        lines.append((f"probe {probe.name}", verdict))
    doc = {
        "kernel": k.release,
        "features": {name: text for name, text in lines if not name.startswith("probe ")},
        "probes": probes,
    }
    return lines, runnable > 0, doc


def cmd_check_kernel(args: argparse.Namespace, config: Config) -> int:
    lines, ok, doc = check_kernel(config)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        width = max(len(n) for n, _ in lines)
        for name, text in lines:
            print(f"{name:<{width}}  {text}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# smoke-test


def cmd_smoke_test(args: argparse.Namespace, config: Config) -> int:
    from agent import smoke
    from agent.sampler import ProbeSet

    kernel = _kernel(config)
    probes = ProbeSet(_make_probes(config, kernel))
    stats_fd = enable_bpf_stats() if args.bpf_stats else None
    try:
        probes.start_all()
        probes.read_windows()  # baseline: the smoke window starts now
        load = smoke.generate_load()
        windows = probes.read_windows()
        costs = {}
        if stats_fd is not None:
            for name in windows:
                p = probes.probe(name)
                st = p.program_stats()
                runs = sum(c for _, c in st.values())
                if runs:
                    costs[name] = sum(t for t, _ in st.values()) / runs
        results = smoke.summarize(probes.states, windows, costs)
    finally:
        probes.close_all()
        if stats_fd is not None:
            os.close(stats_fd)
    ok = smoke.passed(results)
    if args.json:
        print(json.dumps({
            "agent_version": __version__,
            "kernel": kernel.release,
            "passed": ok,
            "load": load,
            "probes": {n: r.as_dict() for n, r in results.items()},
        }, indent=2))
    else:
        print(f"kernel {kernel.release}; load: " + ", ".join(f"{k}={v}" for k, v in load.items()))
        print(smoke.render_table(results))
        print("PASS: every supported probe attached and saw events" if ok else
              "FAIL: a supported probe is down or saw no events (see DETAIL)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from agent.service import run_agent

    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return run_agent(config, stop)


# ---------------------------------------------------------------------------------------------


# flag name -> Config key, for the flags that map onto config keys
RUN_FLAGS = {
    "listen": "HOST:PORT to serve /metrics /healthz /readyz /report on (default 0.0.0.0:9810)",
    "node_name": "node name (default: $NODE_NAME, else the host name)",
    "cgroup_root": "cgroup v2 root (default: detected)",
    "sample_interval": "seconds per window (default 10)",
    "extender_url": "scheduler extender base URL; reports go to <url>/metrics/report (default: off)",
    "push_interval": "seconds between pushes (default 30)",
    "push_timeout": "seconds per push attempt (default 5)",
    "kubernetes": "auto | on | off (default auto: in-cluster when the service account exists)",
    "tenant_label": "pod label naming the tenant (default: the namespace)",
    "log_level": "debug | info | warning | error (default info)",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ebpf-edge-agent", description=__doc__)
    p.add_argument("--version", action="version", version=f"ebpf-edge-agent {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent: sample, serve, push (foreground)")
    for key, helptext in RUN_FLAGS.items():
        run.add_argument("--" + key.replace("_", "-"), dest=key, default=None, help=helptext)
    run.add_argument("--strict", dest="strict", action="store_const", const="true", default=None,
                     help="exit if any probe fails to start (for tests)")

    ck = sub.add_parser("check-kernel", help="what this kernel supports, one line per feature")
    ck.add_argument("--json", action="store_true", help="print one JSON document")

    st = sub.add_parser("smoke-test", help="load every probe, make bounded loopback load, report")
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.add_argument("--bpf-stats", action="store_true",
                    help="measure each probe's kernel run time per event (BPF_ENABLE_STATS, "
                         "released when the test ends)")
    for sp in (run, ck, st):
        sp.add_argument("--config", default=None, help="YAML config file")
        sp.add_argument("--probes", dest="probes", default=None,
                        help="comma-separated probes (default: all)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {"probes": args.probes}
    if args.command == "run":
        flags.update({k: getattr(args, k) for k in RUN_FLAGS})
        flags["strict"] = args.strict
    try:
        config = load_config(args.config, os.environ, flags)
    except ConfigError as e:
        print(f"ebpf-edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2
    _setup_logging("debug" if args.verbose else config.log_level)
    links = service_links(os.environ)
    if links:
        log.warning("ignoring %d Kubernetes service-link variable(s) under our prefix: %s (a "
                    "Service whose name starts with ebpf-edge-agent; the DaemonSet sets "
                    "enableServiceLinks: false to keep them out)", len(links), ", ".join(links))
    if args.command == "run":
        return cmd_run(args, config)
    if args.command == "check-kernel":
        return cmd_check_kernel(args, config)
    if args.command == "smoke-test":
        return cmd_smoke_test(args, config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
