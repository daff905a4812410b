"""Command line: wiring only."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

from agent import __version__
from agent.config import ConfigError, Config, load_config
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
    from agent.probes import PROBE_CLASSES

    return [PROBE_CLASSES[name](config, kernel) for name in config.probes]


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
    from agent.export.extender import Pusher
    from agent.sampler import ProbeSet
    from agent.server import Server
    from agent.service import ReportBox, Sampler, make_registry

    box = ReportBox()
    holder: dict = {}

    def states():
        ps = holder.get("probes")
        return ps.states if ps is not None else {}

    # bind the port before loading any BPF: an unusable port is a config error (exit 2)
    try:
        server = Server(config.listen_host, config.listen_port, registry=None, latest=box.report,
                        payload=box.payload, states=states)
    except OSError as e:
        print(f"ebpf-edge-agent: invalid configuration: listen: {config.listen!r} cannot be bound "
              f"({e.strerror or e}); choose a free HOST:PORT", file=sys.stderr)
        return 2
    try:
        pod_source = _pod_source(config)
    except ConfigError as e:
        server.httpd.server_close()
        print(f"ebpf-edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    pusher = None
    if config.extender_url:
        pusher = Pusher(config.extender_url, config.push_timeout, interval=config.push_interval,
                        token_file=config.extender_token_file, ca_file=config.extender_ca_file,
                        verify=config.extender_tls_verify,
                        backoff_max=max(1.0, config.push_interval))
    sampler_holder: dict = {}

    def sampler_metrics():
        s = sampler_holder.get("sampler")
        return s.metrics() if s is not None else iter(())

    extras = [sampler_metrics, lambda: _pod_metrics(pod_source)] + ([pusher.metrics] if pusher else [])
    server.registry = make_registry(box, extras)
    server.start()
    log.info("serving /metrics /healthz /readyz /report on %s (node %s)", config.listen,
             config.resolved_node_name())

    kernel = _kernel(config)
    probes = ProbeSet(_make_probes(config, kernel))
    holder["probes"] = probes
    try:
        st = probes.start_all()
        bad = {n: s for n, s in st.items() if s.state.value != "up"}
        if config.strict and bad:
            for n, s in bad.items():
                log.error("strict: probe %s is %s: %s", n, s.state.value, s.reason)
            return 1
        if stop.is_set():
            return 0
        pod_source.start()
        if config.advertise_capacity:
            threading.Thread(target=_advertise_capacity, args=(config, pod_source, stop),
                             name="capacity", daemon=True).start()
        sampler = Sampler(config, probes, pod_source)
        sampler_holder["sampler"] = sampler
        sampler.start()
        if pusher:
            pusher.start()
        interval = config.sample_interval
        next_tick = time.monotonic() + interval
        while not stop.wait(max(0.0, next_tick - time.monotonic())):
            report = sampler.tick()
            payload = box.publish(report)
            if pusher:
                pusher.offer(payload)  # the pusher keeps the push_interval cadence itself
            now = time.monotonic()
            next_tick += interval
            if next_tick < now:  # overran: skip to the next future slot, never burst
                next_tick = now + interval
        return 0
    finally:
        t0 = time.monotonic()
        server.stop()
        if pusher:
            pusher.stop(timeout=1.0)
        probes.close_all()
        pod_source.stop()
        log.info("stopped in %.2fs (probes detached)", time.monotonic() - t0)


def _pod_metrics(pod_source):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    c = CounterMetricFamily("ebpf_cgroup_read_problems",
                            "cgroup files skipped while reading (vanished, garbled, errors)",
                            labels=["kind"])
    totals = pod_source.read_totals()
    for kind in ("vanished", "garbled", "errors"):
        c.add_metric([kind], totals.get(kind, 0))
    yield c
    view = pod_source.metadata.snapshot()
    g = GaugeMetricFamily("ebpf_pod_metadata_synced",
                          "1 once pod metadata was listed (always 1 standalone)", labels=["source"])
    g.add_metric([view.source], 1 if view.synced else 0)
    yield g
    e = CounterMetricFamily("ebpf_kube_api_errors", "Kubernetes API errors (the last good view is kept)")
    e.add_metric([], view.errors_total)
    yield e


CAPACITY_RETRY = 600.0


def _advertise_capacity(config: Config, pod_source, stop: threading.Event) -> None:
    """Publish the link speed as an extended resource; retried every 10 minutes on failure."""
    from agent.capacity import CapacityError, advertise_link_speed

    endpoint = getattr(pod_source.metadata, "endpoint", None)
    if endpoint is None:
        log.error("capacity: no Kubernetes API in use; nothing advertised")
        return
    while not stop.is_set():
        try:
            bps = advertise_link_speed(endpoint, config.resolved_node_name(),
                                       resource_name=config.capacity_resource,
                                       interface=config.capacity_interface or None,
                                       sys_class_net=str(config.sys_root / "class" / "net"))
            log.info("capacity: advertised %s=%d on node %s", config.capacity_resource, bps,
                     config.resolved_node_name())
            return
        except CapacityError as e:
            log.error("%s (retry in %.0fs)", e, CAPACITY_RETRY)
        except Exception as e:  # noqa: BLE001 - never take the agent down
            log.error("capacity: %s (retry in %.0fs)", e, CAPACITY_RETRY)
        stop.wait(CAPACITY_RETRY)


def _pod_source(config: Config):
    from agent.pods import ClusterPods

    return ClusterPods.from_config(config)


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
    if args.command == "run":
        return cmd_run(args, config)
    if args.command == "check-kernel":
        return cmd_check_kernel(args, config)
    if args.command == "smoke-test":
        return cmd_smoke_test(args, config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
