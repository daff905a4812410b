"""ExtenderConfig: one frozen object built once from defaults < YAML file < environment < flags.

Every key can be set in the YAML file (same name), by ``EBPF_EDGE_EXTENDER_<KEY>`` (upper case)
and, for the common ones, by a flag; flags win. An invalid value raises :class:`ConfigError`
naming the key, the bad value, where it came from and what is allowed; the CLI exits 2.

Loading (file, environment, flags, error messages) is the small utility both programs share,
agent/configload.py; this program never imports the agent's own configuration.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from agent.configload import ConfigError, build, convert, field_default, gather, unknown_key

ENV_PREFIX = "EBPF_EDGE_EXTENDER_"
DEFAULT_PORT = 8888
POLICIES = ("node-score", "seed004")


def default_schema_file() -> Path:
    """The repository's schema (an editable install or a checkout); the image sets
    EBPF_EDGE_EXTENDER_SCHEMA_FILE to its copy."""
    return Path(__file__).resolve().parent.parent / "schemas" / "node-report.schema.json"


def _default_seed004() -> dict[str, float]:
    # seed 004's calculateScore: priority base (35 for a high-priority pod), capacity 40,
    # fairness 15, latency 20 against a 120 ms target, dominance penalty 15, violation penalty 20
    return {"priority_high": 35.0, "priority_normal": 25.0, "priority_low": 15.0,
            "high_priority_threshold": 1000.0, "capacity": 40.0, "fairness": 15.0,
            "latency": 20.0, "latency_target_ms": 120.0, "dominance": 15.0, "violation": 20.0}


@dataclass(frozen=True)
class ExtenderConfig:
    listen: str = f"0.0.0.0:{DEFAULT_PORT}"
    policy: str = "node-score"  # node-score | seed004
    # freshness: a report expires ttl_factor x its push_interval_seconds after it was received
    # (ttl_seconds > 0 overrides); expired nodes are kept (known, not fresh) for forget_after
    ttl_factor: float = 3.0
    ttl_seconds: float = 0.0
    forget_after: float = 3600.0
    max_body_bytes: int = 4 * 1024 * 1024  # a push above this gets 413 (110 pods are ~70 KB)
    # auth and TLS for the push (the scheduler's calls come over localhost)
    token_file: str = ""  # non-empty: pushes need "Authorization: Bearer <contents>"
    tls_cert_file: str = ""
    tls_key_file: str = ""
    schema_file: Path = field(default_factory=default_schema_file)
    # bandwidth filter (opt-in per pod by annotation; a node without a fresh report passes)
    bandwidth_annotation: str = "ebpf-edge-agent.io/bandwidth"
    capacity_resource: str = "example.com/SLO"  # bit/s on the Node (the agent's advertisement)
    default_node_capacity_bps: float = 0.0  # 0: unknown (NodeNames mode without Node objects)
    seed004: Mapping[str, float] = field(default_factory=_default_seed004)
    log_level: str = "info"

    def __post_init__(self) -> None:
        validate(self)

    @property
    def listen_host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


def _num(key: str, v: Any, lo: float, hi: float, what: str = "a number") -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(v) or not lo <= v <= hi:
        raise ConfigError(key, v, f"{what} within {lo:g}..{hi:g}")


def validate(c: ExtenderConfig) -> None:
    host, sep, port = c.listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError("listen", c.listen, "HOST:PORT with a port in 0..65535 (e.g. 0.0.0.0:8888)")
    if c.policy not in POLICIES:
        raise ConfigError("policy", c.policy, f"one of {', '.join(POLICIES)}")
    _num("ttl_factor", c.ttl_factor, 1, 1000)
    _num("ttl_seconds", c.ttl_seconds, 0, 86400, "seconds")
    _num("forget_after", c.forget_after, 1, 30 * 86400, "seconds")
    if isinstance(c.max_body_bytes, bool) or not isinstance(c.max_body_bytes, int) \
            or not 1024 <= c.max_body_bytes <= 1 << 30:
        raise ConfigError("max_body_bytes", c.max_body_bytes, f"an integer within 1024..{1 << 30}")
    for key in ("token_file", "tls_cert_file", "tls_key_file"):
        p = getattr(c, key)
        if p and not Path(p).is_file():
            raise ConfigError(key, p, "an existing readable file, or empty")
    if bool(c.tls_cert_file) != bool(c.tls_key_file):
        raise ConfigError("tls_key_file" if c.tls_cert_file else "tls_cert_file", "",
                          "tls_cert_file and tls_key_file together (both or neither)")
    if not Path(c.schema_file).is_file():
        raise ConfigError("schema_file", str(c.schema_file),
                          "the node report JSON Schema (schemas/node-report.schema.json)")
    if not c.bandwidth_annotation or not c.capacity_resource:
        raise ConfigError("bandwidth_annotation" if not c.bandwidth_annotation else
                          "capacity_resource", "", "a non-empty name")
    _num("default_node_capacity_bps", c.default_node_capacity_bps, 0, 1e15, "bit/s")
    known = _default_seed004()
    for k, v in c.seed004.items():
        if k not in known:
            raise unknown_key(str(k), known, "", "seed004.")
        _num(f"seed004.{k}", v, -1e9 if k == "high_priority_threshold" else 0, 1e9)
    if c.seed004.get("latency_target_ms", 1) <= 0:
        raise ConfigError("seed004.latency_target_ms", c.seed004["latency_target_ms"], "a number > 0")
    if c.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError("log_level", c.log_level, "one of debug, info, warning, error")


_FIELDS = {f.name: f for f in dataclasses.fields(ExtenderConfig)}


def _convert(key: str, raw: Any, source: str) -> Any:
    """A value from YAML (typed) or env/flags (strings) -> the field's type."""
    default = field_default(ExtenderConfig, key)
    if key != "seed004":
        return convert(key, raw, default, source)
    if not isinstance(raw, dict):
        raise ConfigError(key, raw, "a mapping", source)
    merged = dict(default)
    for k, v in raw.items():
        if str(k) not in default:
            raise unknown_key(str(k), default, source, "seed004.")
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"seed004.{k}", v, "a number", source)
        merged[str(k)] = float(v)
    return merged


def load_config(file: str | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None) -> ExtenderConfig:
    """Build the config; ``flags`` holds only the flags given on the command line."""
    values, sources = gather(_FIELDS, file, env, flags, ENV_PREFIX, _convert,
                             file_only=("seed004",))
    return build(ExtenderConfig, values, sources)
