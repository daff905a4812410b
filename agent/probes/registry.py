"""The one list of probes. Everything that needs to know which probes exist reads it: kernel
detection (the tracepoints to look at), configuration checks (probe names, score signals),
the report and the exporters (each probe's declared figures and series), the smoke test and
the kernel-matrix scripts. Adding a probe: its spec and class in ``agent/probes/<name>.py``,
its C file in ``bpf/``, and one line below (docs/adding-a-probe.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.probes import connect, runqlat, skb_drop, tcp_retrans, tcp_rtt
from agent.probes.spec import ProbeSpec

if TYPE_CHECKING:
    from agent.config import Config
    from agent.kernel import KernelInfo
    from agent.probes.base import BccProbe

PROBES = {
    m.SPEC.name: (m.SPEC, cls)
    for m, cls in (
        (tcp_rtt, tcp_rtt.TcpRttProbe),
        (tcp_retrans, tcp_retrans.TcpRetransProbe),
        (skb_drop, skb_drop.SkbDropProbe),
        (runqlat, runqlat.RunqlatProbe),
        (connect, connect.ConnectProbe),
    )
}

# score signals that come from node readers (SNMP counters, /proc/stat), not from a probe
READER_SIGNALS = ("retrans_rate", "cpu_util")


def names() -> tuple[str, ...]:
    return tuple(PROBES)


def specs() -> tuple[ProbeSpec, ...]:
    return tuple(spec for spec, _ in PROBES.values())


def spec(name: str) -> ProbeSpec:
    return PROBES[name][0]


def probe_class(name: str) -> type:
    return PROBES[name][1]


def tracepoints() -> tuple[str, ...]:
    """Every tracepoint any probe needs or can use, in registry order, once each."""
    out: list[str] = []
    for s in specs():
        out += [tp for tp in s.all_tracepoints() if tp not in out]
    return tuple(out)


def signals() -> tuple[str, ...]:
    """Every score signal: the readers' and the probes'."""
    return READER_SIGNALS + tuple(sig.name for s in specs() for sig in s.signals)


def known() -> dict[str, tuple[str, ...]]:
    """What configuration loading checks names against (agent.config.load_config)."""
    return {"probes": names(), "signals": signals()}


def selected(config: "Config") -> tuple[ProbeSpec, ...]:
    """The configured probes' specs (empty ``probes``: all), in registry order."""
    wanted = config.probes or names()
    return tuple(s for s in specs() if s.name in wanted)


def check_config(config: "Config") -> None:
    """Raise ConfigError for a probe name or score signal no probe declares (the CLI exits 2,
    before any BPF is loaded)."""
    from agent.config import ConfigError

    known = names()
    for p in config.probes or ():
        if p not in known:
            raise ConfigError("probes", p, f"one of {', '.join(known)}")
    sigs = signals()
    for k, w in config.score.weights.items():
        if k not in sigs:
            raise ConfigError(f"score.weights.{k}", w, f"a weight for one of {', '.join(sigs)}")
    for k, b in config.score.bounds.items():
        if k not in sigs:
            raise ConfigError(f"score.bounds.{k}", list(b), f"bounds for one of {', '.join(sigs)}")
    for k in sigs:
        if config.score.weights.get(k) and signal_bounds(config, k) is None:
            raise ConfigError(f"score.bounds.{k}", None, f"bounds [low, high] for the weighted signal {k}")


def signal_bounds(config: "Config", name: str) -> tuple[float, float] | None:
    """The configured bounds of a score signal, else its probe's declared default."""
    b = config.score.bounds.get(name)
    if b is not None:
        return tuple(b)
    for s in specs():
        for sig in s.signals:
            if sig.name == name:
                return sig.bounds
    return None


def detect_kernel(config: "Config", check_permission: bool = True) -> "KernelInfo":
    """The one place the running kernel is looked at: its tracefs, BTF, headers, permission,
    and the formats of every tracepoint a registered probe needs or can use."""
    from pathlib import Path

    from agent.kernel import detect

    return detect(config.tracefs_roots, config.btf_path, config.modules_root, config.proc_root,
                  check_permission=check_permission, tracepoints=tracepoints(),
                  image_headers=Path(config.image_headers) if config.image_headers else None)


def build(config: "Config", kernel: "KernelInfo") -> list["BccProbe"]:
    """One probe object per configured probe (nothing is compiled or attached yet)."""
    return [PROBES[s.name][1](config, kernel) for s in selected(config)]


def main(argv: list[str] | None = None) -> int:
    """``python -m agent.probes.registry names|tracepoints [--slash]``: the lists, one per line,
    for scripts (the kernel matrix). Needs nothing beyond the standard library."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] not in ("names", "tracepoints"):
        print("usage: python -m agent.probes.registry names|tracepoints [--slash]", file=sys.stderr)
        return 2
    items = names() if args[0] == "names" else tracepoints()
    for item in items:
        print(item.replace(":", "/") if "--slash" in args[1:] else item)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
