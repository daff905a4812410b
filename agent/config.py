"""Config: one frozen object, built once from defaults < YAML file < environment < flags.

Every key can be set in the YAML file (same name), by an environment variable
``EBPF_EDGE_AGENT_<KEY>`` (upper case) and, for the common ones, by a flag; flags win. An
invalid config raises :class:`ConfigError`, whose message names the key, the bad value, where
it came from and what is allowed; the CLI turns it into exit status 2 before any BPF is loaded.
Every filesystem root is a field so the whole agent can run against fixture trees.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

from agent.configload import ConfigError, build, convert, gather, unknown_key

ENV_PREFIX = "EBPF_EDGE_AGENT_"
DEFAULT_PORT = 9810


def _default_bpf_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bpf"


def _default_weights() -> dict[str, float]:
    return {"rtt_p99": 0.3, "retrans_rate": 0.2, "drop_rate": 0.2, "runqlat_p95": 0.15,
            "cpu_util": 0.15}


def _default_bounds() -> dict[str, tuple[float, float]]:
    # value at which a signal starts to count (norm 0) and where it is as bad as it gets (norm 1)
    return {
        "rtt_p99": (1.0, 200.0),  # ms
        "retrans_rate": (0.0, 0.05),  # retransmitted / sent segments
        "drop_rate": (0.0, 200.0),  # weighted drops per second
        "runqlat_p95": (0.1, 20.0),  # ms
        "cpu_util": (0.5, 1.0),  # share of all CPUs
    }


def _default_drop_weights() -> dict[str, float]:
    # Drops that say nothing about congestion or a sick node weigh 0; queue drops weigh 1.
    return {
        "NO_SOCKET": 0.0, "SOCKET_CLOSE": 0.0, "SOCKET_FILTER": 0.0, "OTHERHOST": 0.0,
        "QUEUE_PURGE": 0.0, "UNIX_DISCONNECT": 0.0, "TCP_CLOSE": 0.0, "NOT_SPECIFIED": 0.1,
        "QDISC_DROP": 1.0, "QDISC_OVERLIMIT": 1.0, "QDISC_CONGESTED": 1.0, "CPU_BACKLOG": 1.0,
        "FULL_RING": 1.0, "SOCKET_RCVBUFF": 1.0, "SOCKET_BACKLOG": 1.0, "NETFILTER_DROP": 0.5,
        "TCP_LISTEN_OVERFLOW": 1.0, "NOMEM": 1.0,
    }


@dataclass(frozen=True)
class ScoreConfig:
    weights: Mapping[str, float] = field(default_factory=_default_weights)
    bounds: Mapping[str, tuple[float, float]] = field(default_factory=_default_bounds)
    drop_reason_weights: Mapping[str, float] = field(default_factory=_default_drop_weights)
    default_drop_weight: float = 0.5


@dataclass(frozen=True)
class Config:
    # service
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    node_name: str = ""  # empty: $NODE_NAME (downward API), else the host name
    sample_interval: float = 10.0
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line)
    strict: bool = False  # a probe failure is fatal (for tests)
    # extender push
    extender_url: str = ""  # empty: push off; several URLs comma-separated
    push_interval: float = 30.0
    push_timeout: float = 5.0
    # /healthz is 200 this long after start without a report (BCC compiles every probe first)
    startup_grace: float = 120.0
    # seconds one probe's compiling child may take (compile, load, attach, hand over): a real
    # node 1-2 s, emulated kernels (TCG) 20-50 s on a quiet host and 85-120+ s on a loaded one
    # (measured). A child past it is killed and the probe is down (retried with backoff)
    compile_timeout: float = 300.0
    extender_token_file: str = ""
    extender_ca_file: str = ""
    extender_tls_verify: bool = True
    # pods
    cgroup_root: str = ""  # empty: detect the cgroup v2 mount
    kubernetes: str = "auto"  # auto | on | off
    kubernetes_api_url: str = ""  # empty: in-cluster (KUBERNETES_SERVICE_HOST + service account)
    standalone_cgroup_depth: int = 1  # standalone: cgroups this deep below the root are "pods"
    # node capacity advertisement (needs Kubernetes and RBAC to patch nodes/status)
    advertise_capacity: bool = False
    capacity_resource: str = "example.com/SLO"
    capacity_interface: str = ""  # empty: the interface of the default route
    tenant_label: str = ""  # empty: the namespace is the tenant
    rtt_slo_annotation: str = "ebpf-edge-agent.io/rtt-slo-ms"
    default_rtt_slo_ms: float = 100.0
    # /metrics series budget (the report and the push always carry every pod)
    pod_series: bool = True  # per-pod series at all
    max_exported_pods: int = 110  # the kubelet's default maxPods; the rest counted as overflow
    export_buckets_per_octave: int = 4  # exported histogram resolution (the kernel's is finer)
    # probes
    probes: tuple[str, ...] | None = None  # None: every probe of agent.probes.registry
    max_addresses: int = 1024
    fast_addresses: int = 512
    max_tasks: int = 65536
    max_cgroups: int = 512  # runqlat's per-cgroup rows (pods' containers and the node's own)
    hist_sub_bits: int = 5
    # roots
    tracefs_roots: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
    btf_path: Path = Path("/sys/kernel/btf/vmlinux")
    modules_root: Path = Path("/lib/modules")
    # a generic kernel header tree (include/, arch/*/include/) used when the host has none for
    # the running kernel (the image sets it); empty: none
    image_headers: str = ""
    proc_root: Path = Path("/proc")
    sys_root: Path = Path("/sys")
    bpf_dir: Path = field(default_factory=_default_bpf_dir)
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def __post_init__(self) -> None:
        validate(self)

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    @property
    def extender_urls(self) -> tuple[str, ...]:
        """The URLs of extender_url (comma-separated: one push per URL, and per address of each)."""
        return tuple(u.strip() for u in self.extender_url.split(",") if u.strip())

    def resolved_node_name(self) -> str:
        return self.node_name or os.environ.get("NODE_NAME", "") or socket.gethostname()


# ---------------------------------------------------------------------------------------------
# validation of a built Config (types already converted)


def _check_positive(key: str, v: Any, lo: float, hi: float, unit: str = "seconds") -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not lo <= v <= hi:
        raise ConfigError(key, v, f"a number of {unit} within {lo:g}..{hi:g}")


def _check_url(key: str, value: str, empty_means: str) -> None:
    """An http(s) URL with a host and a valid port, or empty."""
    if not value:
        return
    u = urlparse(value)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ConfigError(key, value, f"an http:// or https:// URL with a host, or {empty_means}")
    try:
        u.port
    except ValueError:
        raise ConfigError(key, value, "a URL with a valid port") from None


def validate(c: Config) -> None:
    # listen
    host, sep, port = c.listen.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
        raise ConfigError("listen", c.listen, "HOST:PORT with a port in 1..65535 (e.g. 0.0.0.0:9810)")
    _check_positive("sample_interval", c.sample_interval, 0.1, 3600)
    _check_positive("push_interval", c.push_interval, 1, 86400)
    _check_positive("push_timeout", c.push_timeout, 0.1, 300)
    _check_positive("startup_grace", c.startup_grace, 1, 3600)
    _check_positive("compile_timeout", c.compile_timeout, 1, 3600)
    if c.push_timeout >= c.push_interval:
        raise ConfigError("push_timeout", c.push_timeout,
                          f"less than push_interval ({c.push_interval:g}s)")
    if c.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", c.log_level, "one of debug, info, warning, error")
    if c.log_format not in ("text", "json"):
        raise ConfigError("log_format", c.log_format, "text or json")
    for url in c.extender_urls:
        _check_url("extender_url", url, "empty to turn push off (several: comma-separated)")
    for key in ("extender_token_file", "extender_ca_file"):
        p = getattr(c, key)
        if p and not Path(p).is_file():
            raise ConfigError(key, p, "an existing readable file, or empty")
    if c.kubernetes not in ("auto", "on", "off"):
        raise ConfigError("kubernetes", c.kubernetes, "one of auto, on, off")
    _check_url("kubernetes_api_url", c.kubernetes_api_url, "empty for in-cluster")
    if c.advertise_capacity and c.kubernetes == "off":
        raise ConfigError("advertise_capacity", True, "false when kubernetes is off (it patches the Node)")
    if not re.fullmatch(r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
                        c.capacity_resource or ""):
        raise ConfigError("capacity_resource", c.capacity_resource,
                          "an extended resource name such as example.com/SLO")
    if isinstance(c.standalone_cgroup_depth, bool) or c.standalone_cgroup_depth not in range(0, 9):
        raise ConfigError("standalone_cgroup_depth", c.standalone_cgroup_depth, "an integer within 0..8")
    _check_positive("default_rtt_slo_ms", c.default_rtt_slo_ms, 0.001, 600_000, "milliseconds")
    # which names exist is the probe registry's to say (agent.probes.registry.check_config)
    if c.probes is not None:
        if not c.probes:
            raise ConfigError("probes", list(c.probes),
                              "a non-empty list of probe names (leave the key out for all)")
        if len(set(c.probes)) != len(c.probes):
            raise ConfigError("probes", list(c.probes), "a list without repeated names")
    for key in ("max_addresses", "max_tasks"):
        v = getattr(c, key)
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 22:
            raise ConfigError(key, v, f"an integer within 1..{1 << 22}")
    if isinstance(c.hist_sub_bits, bool) or c.hist_sub_bits not in range(3, 8):
        raise ConfigError("hist_sub_bits", c.hist_sub_bits, "an integer within 3..7")
    v = c.fast_addresses
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096:
        raise ConfigError("fast_addresses", v, "an integer within 1..4096")
    v = c.max_cgroups
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 16384:
        raise ConfigError("max_cgroups", v, "an integer within 1..16384")
    v = c.max_exported_pods
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 100_000:
        raise ConfigError("max_exported_pods", v, "an integer within 0..100000")
    v = c.export_buckets_per_octave
    if isinstance(v, bool) or v not in (1, 2, 4, 8):  # hist_sub_bits >= 3: 8 slots per octave
        raise ConfigError("export_buckets_per_octave", v, "1, 2, 4 or 8")
    _validate_score(c.score)


def _validate_score(s: ScoreConfig) -> None:
    # which signals exist is the probe registry's to say (agent.probes.registry.check_config)
    for k, w in s.weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ConfigError(f"score.weights.{k}", w, "a number within 0..1")
    total = sum(s.weights.values())
    if not 0.99 <= total <= 1.01:
        raise ConfigError("score.weights", dict(s.weights),
                          f"weights that sum to 1 (these sum to {total:g})")
    for k, b in s.bounds.items():
        ok = (isinstance(b, (tuple, list)) and len(b) == 2
              and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in b)
              and b[0] < b[1])
        if not ok:
            raise ConfigError(f"score.bounds.{k}", b, "a pair [low, high] of numbers with low < high")
    for k, w in s.drop_reason_weights.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
            raise ConfigError(f"score.drop_reason_weights.{k}", w, "a number >= 0")
    w = s.default_drop_weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
        raise ConfigError("score.default_drop_weight", w, "a number >= 0")


# ---------------------------------------------------------------------------------------------
# loading: defaults < file < environment < flags

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_SCORE_KEYS = {f.name for f in dataclasses.fields(ScoreConfig)}


def _convert(key: str, raw: Any, source: str) -> Any:
    """Turn a value from YAML (typed) or env/flags (strings) into the field's type."""
    if key == "score":
        return _score_from(raw, source)
    default = getattr(Config(), key)
    if key == "probes":
        default = ()  # a list of names (its default, None, means every probe)
    return convert(key, raw, default, source)


def _score_from(raw: Any, source: str) -> ScoreConfig:
    if not isinstance(raw, dict):
        raise ConfigError("score", raw, "a mapping with weights, bounds, drop_reason_weights", source)
    base = ScoreConfig()
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k not in _SCORE_KEYS:
            raise unknown_key(str(k), _SCORE_KEYS, source, "score.")
        if k == "default_drop_weight":
            kw[k] = v
            continue
        if not isinstance(v, dict):
            raise ConfigError(f"score.{k}", v, "a mapping", source)
        merged = dict(getattr(base, k))
        if k == "bounds":
            merged.update({kk: tuple(vv) if isinstance(vv, list) else vv for kk, vv in v.items()})
        else:
            merged.update(v)
        kw[k] = merged
    return ScoreConfig(**kw)


def _check_known(values: Mapping[str, Any], sources: Mapping[str, str],
                 known: Mapping[str, Any]) -> None:
    names = tuple(known.get("probes", ()))
    for p in values.get("probes") or ():
        if names and p not in names:
            raise ConfigError("probes", p, f"one of {', '.join(names)}", sources.get("probes", ""))
    sigs = tuple(known.get("signals", ()))
    score = values.get("score")
    if score is None or not sigs:
        return
    for section, what in (("weights", "a weight for"), ("bounds", "bounds for")):
        for k, v in getattr(score, section).items():
            if k not in sigs:
                raise ConfigError(f"score.{section}.{k}", list(v) if isinstance(v, tuple) else v,
                                  f"{what} one of {', '.join(sigs)}", sources.get("score", ""))


# Kubernetes service links: for every Service of the pod's namespace the kubelet sets
# <SVC>_SERVICE_HOST, <SVC>_SERVICE_PORT[_<PORTNAME>], <SVC>_PORT and <SVC>_PORT_<n>_<PROTO>[_PROTO|
# _PORT|_ADDR] (SVC upper-cased, '-' -> '_'). A Service named ebpf-edge-agent[-...] puts them under
# our prefix. Tolerated only when name *and* value have those shapes, so a typo still fails.
_IP = r"(\d{1,3}(\.\d{1,3}){3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:.]*)"
_PORT = r"\d{1,5}"
_URL = rf"(tcp|udp|sctp)://({_IP}|\[{_IP}\]):{_PORT}"
_SERVICE_LINK_SHAPES = (  # (name after the prefix, value)
    (r"(.+_)?service_host", _IP),
    (r"(.+_)?service_port(_[a-z0-9_]+)?", _PORT),
    (r"(.+_)?port", _URL),
    (r"(.+_)?port_\d{1,5}_(tcp|udp|sctp)", _URL),
    (r"(.+_)?port_\d{1,5}_(tcp|udp|sctp)_proto", r"(tcp|udp|sctp)"),
    (r"(.+_)?port_\d{1,5}_(tcp|udp|sctp)_port", _PORT),
    (r"(.+_)?port_\d{1,5}_(tcp|udp|sctp)_addr", _IP),
)


def service_link_name(key: str) -> bool:
    """Whether a config key (lower case, prefix removed) has the shape of a service link name."""
    return any(re.fullmatch(n, key) for n, _ in _SERVICE_LINK_SHAPES)


def is_service_link(name: str, value: str) -> bool:
    """An environment variable the kubelet made for a Service (name and value both fit)."""
    if not name.startswith(ENV_PREFIX):
        return False
    key = name[len(ENV_PREFIX):].lower()
    return any(re.fullmatch(n, key) and re.fullmatch(v, value.strip(), re.I)
               for n, v in _SERVICE_LINK_SHAPES)


def service_links(env: Mapping[str, str]) -> list[str]:
    """Names of the service-link variables under our prefix, sorted (they are ignored)."""
    return sorted(n for n, v in env.items() if is_service_link(n, v))


def load_config(file: str | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None,
                known: Mapping[str, Any] | None = None) -> Config:
    """Build the Config. ``flags`` holds only the flags given on the command line.

    ``known``: {"probes": names, "signals": names} from the probe registry
    (``agent.probes.registry.known()``); names outside them are refused here, with their
    source, before anything else is checked."""
    values, sources = gather(_FIELDS, file, env, flags, ENV_PREFIX, _convert,
                             file_only=("score",), env_ignored=is_service_link)
    if known:
        _check_known(values, sources, known)
    return build(Config, values, sources)
