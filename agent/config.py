"""Config: one frozen object built once and passed in. Every filesystem root is a field so the
whole agent can run against fixture trees."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PROBE_NAMES = ("tcp_rtt", "tcp_retrans", "skb_drop", "runqlat")


def _default_bpf_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bpf"


@dataclass(frozen=True)
class Config:
    probes: tuple[str, ...] = PROBE_NAMES
    tracefs_roots: tuple[Path, ...] = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
    btf_path: Path = Path("/sys/kernel/btf/vmlinux")
    modules_root: Path = Path("/lib/modules")
    proc_root: Path = Path("/proc")
    bpf_dir: Path = field(default_factory=_default_bpf_dir)
    # bounds of the kernel maps (entries); events that find a map full are counted as lost
    max_addresses: int = 4096
    max_tasks: int = 65536
    hist_sub_bits: int = 5

    def __post_init__(self) -> None:
        unknown = [p for p in self.probes if p not in PROBE_NAMES]
        if unknown:
            raise ValueError(f"probes: unknown probe {unknown[0]!r}; allowed: {', '.join(PROBE_NAMES)}")
        for key in ("max_addresses", "max_tasks"):
            v = getattr(self, key)
            if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 1 << 22:
                raise ValueError(f"{key}: {v!r} is not an integer within 1..{1 << 22}")
        if self.hist_sub_bits not in range(3, 8):
            raise ValueError(f"hist_sub_bits: {self.hist_sub_bits!r} is not within 3..7")
