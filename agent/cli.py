"""ebpf-edge-agent: measures, from the running kernel, what a network-aware scheduler needs to
know about each node (TCP RTT, retransmits, drop reasons, run-queue latency, per-pod CPU and
memory), serves it to Prometheus and pushes it to a scheduler extender.

This module is the command line: wiring only."""

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
from agent.config import ConfigError, Config, load_config, service_links
from agent.kernel import enable_bpf_stats
from agent.logs import setup_logging
from agent.probes import registry

log = logging.getLogger("agent")


DESCRIPTION = """\
Measures, from the running kernel, what a network-aware scheduler needs to know about this
node -- TCP smoothed RTT, retransmits, drop reasons, run-queue latency, per-pod CPU and memory
-- serves it to Prometheus and pushes it to a scheduler extender."""

EPILOG = """\
commands, with an example each:
  run            ebpf-edge-agent run --config /etc/ebpf-edge-agent/agent.yaml
  check-kernel   ebpf-edge-agent check-kernel --require all    (a pre-flight for a rollout)
  smoke-test     ebpf-edge-agent smoke-test --passive 30       (watches, makes no load)
  status         ebpf-edge-agent status                        (exit 0 when healthy)
  top            ebpf-edge-agent top --namespace team-a        (live view; q quits)
  measure        ebpf-edge-agent measure --pod UID --json > before.json
  record         ebpf-edge-agent record --out /var/tmp/depcon2.csv

Every configuration key can also be set by an environment variable EBPF_EDGE_AGENT_<KEY>
(upper case), e.g. EBPF_EDGE_AGENT_SAMPLE_INTERVAL=5; flags win over the environment, which
wins over the --config file. Every key, its default and meaning: config/agent.example.yaml."""


def _in_container() -> bool:
    """Whether this runs in a container (a pod): the fix-it hints differ."""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    return any(os.path.exists(p) for p in ("/.dockerenv", "/run/.containerenv"))


def _hint(problem: str, in_container: bool) -> str:
    """How to fix ``problem`` where this runs: on a host, or in a pod (make dev-setup is wrong
    there; the DaemonSet's volumes and grants are what matter)."""
    host = {
        "headers": "install linux-headers-$(uname -r), or run make dev-setup from a checkout",
        "tracefs": "mount -t tracefs nodev /sys/kernel/tracing",
        "bcc": "install the distribution's python3-bpfcc (never PyPI's bcc), or run make dev-setup",
        "permission": "run as root, or with CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8)",
    }
    pod = {
        "headers": "the node has no kernel headers at /lib/modules/$(uname -r)/build, or the "
                   "host's / is not mounted at /host (the DaemonSet's host-root volume)",
        "tracefs": "mount the host's /sys/kernel at /sys/kernel (host-sys-kernel volume) and "
                   "mount tracefs on the node",
        "bcc": "the image lacks python3-bpfcc: rebuild it from the Dockerfile",
        "permission": "grant CAP_BPF and CAP_PERFMON (CAP_SYS_ADMIN before 5.8) and "
                      "seccompProfile Unconfined, as manifests/base/daemonset.yaml does",
    }
    return (pod if in_container else host)[problem]


def assemble(config: Config):
    """The Agent from its parts, each found once: the port bound first and the pod source
    made next (either failing is a configuration error, raised as ConfigError before any
    BPF is loaded), the pusher, the kernel's facts, the probes (not yet started)."""
    from agent.export.extender import PushGroup
    from agent.pods import ClusterPods
    from agent.server import Server
    from agent.service import Agent

    try:
        server = Server(config.listen_host, config.listen_port)
    except OSError as e:
        raise ConfigError("listen", config.listen,
                          f"a free HOST:PORT (cannot be bound: {e.strerror or e})") from None
    try:
        pod_source = ClusterPods.from_config(config)
    except ConfigError:
        server.httpd.server_close()
        raise
    pusher = None
    if config.extender_urls:
        pusher = PushGroup(config.extender_urls, config.push_timeout, interval=config.push_interval,
                           token_file=config.extender_token_file, ca_file=config.extender_ca_file,
                           verify=config.extender_tls_verify,
                           backoff_max=max(1.0, config.push_interval))
    kernel = registry.detect_kernel(config)
    return Agent(config, kernel, registry.build(config, kernel), pod_source, server, pusher)


# ---------------------------------------------------------------------------------------------
# check-kernel


def _bcc_importable(in_container: bool = False) -> tuple[bool, str]:
    try:
        import bcc  # noqa: F401  (the distribution's python3-bpfcc)
    except ImportError as e:
        return False, f"no ({e}; {_hint('bcc', in_container)})"
    return True, f"yes ({os.path.dirname(bcc.__file__)})"


def bcc_version() -> str:
    try:
        import bcc
    except ImportError:
        return "not importable"
    return getattr(bcc, "__version__", "unknown")


def version_text() -> str:
    return (f"ebpf-edge-agent {__version__}\nbcc {bcc_version()}\n"
            f"kernel {os.uname().release} ({os.uname().machine})")


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print the version, BCC's and the kernel's")

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def _probe_tree_ok(config: Config) -> bool:
    from agent.probes.base import PROBE_HEADERS

    return (config.bpf_dir / PROBE_HEADERS / "include").is_dir()


def _probe_tree_text(config: Config) -> str:
    from agent.probes.base import PROBE_HEADERS

    tree = config.bpf_dir / PROBE_HEADERS
    if not _probe_tree_ok(config):
        return f"absent ({tree}): the probes compile against the kernel headers below"
    return (f"{tree} (first choice: the probes read only tracepoint fields, laid out by the "
            "running kernel's format files, so no kernel's headers are needed)")


def check_kernel(config: Config) -> tuple[list[tuple[str, str]], dict[str, bool], dict]:
    """Lines (feature, finding), whether each configured probe can run, and all as a dict."""
    from agent.probes.base import ProbeUnsupported

    k = registry.detect_kernel(config)
    where = _in_container()
    bcc_ok, bcc_text = _bcc_importable(where)
    lines: list[tuple[str, str]] = [
        ("kernel", k.release),
        ("tracefs", str(k.tracefs) if k.tracefs else f"not mounted ({_hint('tracefs', where)})"),
        ("btf", str(k.btf_path) if k.btf_path else "absent"),
        ("probe header tree", _probe_tree_text(config)),
        ("kernel headers", k.headers.describe() + (
            " (the fallback: only a probe whose tracepoint formats the probe header tree "
            "cannot compile needs them)" if _probe_tree_ok(config) else "")),
        ("bcc python module", bcc_text),
        ("bpf permission", "yes" if k.bpf_permitted else
         f"no: {k.bpf_permission_detail} ({_hint('permission', where)})"),
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
    built = registry.build(config, k)
    for probe in built:
        lines += probe.kernel_notes()
    can_run: dict[str, bool] = {}
    probes = {}
    for probe in built:
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
            if k.headers.kind == "none" and not _probe_tree_ok(config):
                problems.append(f"no kernel headers at {k.headers.path} ({_hint('headers', where)})")
            ok = not problems
            verdict = "can run" if ok else "cannot run: " + "; ".join(problems)
        can_run[probe.name] = ok
        probes[probe.name] = {"can_run": ok, "detail": verdict}
        lines.append((f"probe {probe.name}", verdict))
    doc = {
        "kernel": k.release,
        "features": {name: text for name, text in lines if not name.startswith("probe ")},
        "probes": probes,
    }
    return lines, can_run, doc


def cmd_check_kernel(args: argparse.Namespace, config: Config) -> int:
    lines, can_run, doc = check_kernel(config)
    if args.require == "all":
        ok = bool(can_run) and all(can_run.values())
        verdict = ("every configured probe can run" if ok else "cannot run: " +
                   ", ".join(n for n, v in can_run.items() if not v))
    else:
        ok = any(can_run.values())
        verdict = "at least one probe can run" if ok else "no probe can run"
    doc["require"] = args.require
    doc["passed"] = ok
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        lines.append((f"require {args.require}", ("PASS: " if ok else "FAIL: ") + verdict))
        width = max(len(n) for n, _ in lines)
        for name, text in lines:
            print(f"{name:<{width}}  {text}")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# smoke-test


def cmd_smoke_test(args: argparse.Namespace, config: Config) -> int:
    from agent import smoke
    from agent.sampler import ProbeSet

    kernel = registry.detect_kernel(config)
    probes = ProbeSet(registry.build(config, kernel))
    stats_fd = enable_bpf_stats() if args.bpf_stats else None
    passive = args.passive is not None
    try:
        probes.start_all()
        probes.read_windows()  # baseline: the smoke window starts now
        if passive:  # the node's own traffic only: nothing is generated
            time.sleep(args.passive)
            load = {"passive_seconds": args.passive}
        else:
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
        results = smoke.summarize(probes.states, windows, costs, passive=passive)
    finally:
        probes.close_all()
        if stats_fd is not None:
            os.close(stats_fd)
    ok = smoke.passed(results, passive=passive)
    if args.json:
        print(json.dumps({
            "agent_version": __version__,
            "kernel": kernel.release,
            "mode": "passive" if passive else "active",
            "passed": ok,
            "load": load,
            "probes": {n: r.as_dict() for n, r in results.items()},
        }, indent=2))
    else:
        print(f"kernel {kernel.release}; load: " + ", ".join(f"{k}={v}" for k, v in load.items()))
        print(smoke.render_table(results))
        if passive:
            print("PASS: every supported probe attached and is readable (quiet: no events seen)"
                  if ok else "FAIL: a supported probe is down (see DETAIL)")
        else:
            print("PASS: every supported probe attached and saw events" if ok else
                  "FAIL: a supported probe is down or saw no events (see DETAIL)")
    return 0 if ok else 1


# ---------------------------------------------------------------------------------------------
# run


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    try:
        agent = assemble(config)
    except ConfigError as e:
        print(f"ebpf-edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return agent.run(stop)


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


def _positive_seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < v <= 3600:
        raise argparse.ArgumentTypeError(f"{text!r}: a number of seconds within 0..3600")
    return v


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    # options every command takes, before or after its name
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    common.add_argument("--log-format", dest="log_format", choices=("text", "json"),
                        default=argparse.SUPPRESS,
                        help="text (default) or json: one object per line (time, level, "
                             "message, probe)")
    common.add_argument("--config", default=argparse.SUPPRESS, help="YAML config file")
    common.add_argument("--probes", dest="probes", default=argparse.SUPPRESS,
                        help="comma-separated probes (default: all)")

    p = argparse.ArgumentParser(prog="ebpf-edge-agent", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=fmt, parents=[common])
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", parents=[common], formatter_class=fmt,
        help="run the agent: sample, serve, push (foreground)",
        description="Run the agent in the foreground: a report every sample_interval, served on "
                    "/metrics /healthz /readyz /report and pushed to the extender.",
        epilog="The flags cover the common keys. Every other key (roots, score weights, probe "
               "map sizes, TLS, ...) is set in the --config file or by EBPF_EDGE_AGENT_<KEY>: "
               "see config/agent.example.yaml for each key, its default and meaning.")
    for key, helptext in RUN_FLAGS.items():
        run.add_argument("--" + key.replace("_", "-"), dest=key, default=None, help=helptext)
    run.add_argument("--strict", dest="strict", action="store_const", const="true", default=None,
                     help="exit if any probe fails to start (for tests)")

    ck = sub.add_parser(
        "check-kernel", parents=[common], formatter_class=fmt,
        help="what this kernel supports, one line per feature",
        description="What this kernel and this environment support, one line per feature, and "
                    "whether the configured probes can run. Loads nothing but a two-instruction "
                    "test program.")
    ck.add_argument("--json", action="store_true", help="print one JSON document")
    ck.add_argument("--require", choices=("any", "all"), default="any",
                    help="exit 0 when any configured probe can run (default), or only when all "
                         "can: the pre-flight for a rollout")

    st = sub.add_parser(
        "smoke-test", parents=[common], formatter_class=fmt,
        help="attach every probe and report what it saw",
        description="Attach every probe and report what each saw. By default (active) it CREATES "
                    "LOAD on this node for about three seconds: busy processes (two per CPU), "
                    "loopback TCP transfers, connects to a closed port and a full SYN backlog. "
                    "--passive SECONDS only watches the node's own traffic: the mode for a "
                    "production node.")
    st.add_argument("--json", action="store_true", help="print one JSON document")
    st.add_argument("--passive", type=_positive_seconds, default=None, metavar="SECONDS",
                    help="make no load; watch for SECONDS. Passes when every supported probe "
                         "attached and is readable; one that saw nothing is shown as quiet")
    st.add_argument("--bpf-stats", action="store_true",
                    help="measure each probe's kernel run time per event (BPF_ENABLE_STATS, "
                         "released when the test ends)")
    from agent.tools import cli as tools_cli

    tools_cli.add_parsers(sub, common, fmt)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {"probes": getattr(args, "probes", None), "log_format": getattr(args, "log_format", None)}
    if args.command == "run":
        flags.update({k: getattr(args, k) for k in RUN_FLAGS})
        flags["strict"] = args.strict
    try:
        config = load_config(getattr(args, "config", None), os.environ, flags, registry.known())
        registry.check_config(config)
    except ConfigError as e:
        print(f"ebpf-edge-agent: invalid configuration: {e}", file=sys.stderr)
        return 2
    setup_logging("debug" if getattr(args, "verbose", False) else config.log_level, config.log_format)
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
    from agent.tools import cli as tools_cli

    if args.command in tools_cli.COMMANDS:
        return tools_cli.dispatch(args, config)
    return 2


if __name__ == "__main__":
    sys.exit(main())
