"""Value types of the cgroup readers. No IO.

A field that is ``None`` means "not available" (the file is absent in this hierarchy, e.g. no
memory controller in v2, or it could not be parsed) -- never zero. Limits that the kernel writes
as ``max`` are represented inside their own type (``CpuMax.quota_usec is None``,
``MemoryMax.limit_bytes is None``) so that "unlimited" and "unknown" never meet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Tuple

QOS_CLASSES = ("guaranteed", "burstable", "besteffort")
RUNTIMES = ("containerd", "cri-o", "docker")


@dataclass(frozen=True)
class CpuStat:
    """``cpu.stat``: cumulative CPU time in microseconds. The throttling fields exist only when
    the cpu controller is enabled for the cgroup (None otherwise)."""

    usage_usec: int
    user_usec: int
    system_usec: int
    nr_periods: Optional[int] = None
    nr_throttled: Optional[int] = None
    throttled_usec: Optional[int] = None


@dataclass(frozen=True)
class CpuMax:
    """``cpu.max``: ``quota_usec`` per ``period_usec``; ``quota_usec`` None when ``max``."""

    quota_usec: Optional[int]
    period_usec: int

    @property
    def limit_cores(self) -> Optional[float]:
        """The quota in cores (``50000 100000`` -> 0.5); None when unlimited."""
        if self.quota_usec is None:
            return None
        return self.quota_usec / self.period_usec


@dataclass(frozen=True)
class MemoryMax:
    """``memory.max``: ``limit_bytes`` None when ``max`` (unlimited)."""

    limit_bytes: Optional[int]


@dataclass(frozen=True)
class MemoryStat:
    """The fields of ``memory.stat`` the agent uses (bytes). ``inactive_file`` is required."""

    inactive_file: int
    active_file: Optional[int] = None
    anon: Optional[int] = None
    file: Optional[int] = None


def working_set(current: Optional[int], inactive_file: Optional[int]) -> Optional[int]:
    """Working set as the kubelet computes it: ``memory.current - inactive_file``, clamped at 0;
    None when either input is not available."""
    if current is None or inactive_file is None:
        return None
    return max(0, current - inactive_file)


@dataclass(frozen=True)
class PsiLine:
    """One PSI line: share of wall time stalled (percent, 0..100) over 10/60/300 s, and the
    cumulative stall time in microseconds."""

    avg10: float
    avg60: float
    avg300: float
    total_usec: int


@dataclass(frozen=True)
class Pressure:
    """``cpu.pressure`` / ``memory.pressure``. ``full`` is None where the kernel has no such line
    (cpu "full" appeared in 5.13)."""

    some: PsiLine
    full: Optional[PsiLine] = None


@dataclass(frozen=True)
class CgroupIdentity:
    """What a cgroup path says about the Kubernetes object it belongs to.

    ``container_id`` is None for the pod-level cgroup. ``runtime`` is None where the path does not
    tell (the cgroupfs driver names containerd and Docker containers by their bare id).
    """

    pod_uid: str
    qos: str  # one of QOS_CLASSES
    driver: str  # "systemd" or "cgroupfs"
    container_id: Optional[str] = None
    runtime: Optional[str] = None  # one of RUNTIMES, or None

    @property
    def is_pod(self) -> bool:
        return self.container_id is None


@dataclass(frozen=True)
class CgroupSample:
    """Everything read from one cgroup directory at one instant.

    ``path`` is relative to the cgroup root, without a leading slash ("" is the root).
    ``identity`` is None for a cgroup that is not a Kubernetes pod or container (standalone mode
    names such cgroups by their path).
    """

    path: str
    identity: Optional[CgroupIdentity]
    taken_at: float  # time.monotonic() right after the read
    cpu_stat: Optional[CpuStat] = None
    cpu_max: Optional[CpuMax] = None
    cpu_pressure: Optional[Pressure] = None
    memory_current: Optional[int] = None
    memory_max: Optional[MemoryMax] = None
    memory_stat: Optional[MemoryStat] = None
    memory_pressure: Optional[Pressure] = None
    # cgroup ids (directory inode numbers, what bpf_get_current_cgroup_id() returns) of this
    # cgroup and of every cgroup below it (a pod's containers, the sandbox included); empty
    # when they could not be read
    cgroup_ids: Tuple[int, ...] = ()

    @property
    def working_set_bytes(self) -> Optional[int]:
        inactive = self.memory_stat.inactive_file if self.memory_stat is not None else None
        return working_set(self.memory_current, inactive)


@dataclass(frozen=True)
class PodCgroups:
    """A pod-level reading plus its containers' readings.

    The pod-level cgroup is the pod's figure (it includes every container and the sandbox, as the
    kubelet accounts it). ``containers`` holds every container cgroup found below it except CRI-O's
    ``crio-conmon-`` monitor; the sandbox (pause) container cannot be told apart by its cgroup name
    under containerd or Docker, so use :func:`agent.cgroups.identity.app_containers` with the ids
    the Kubernetes API reports in ``containerStatuses`` to drop it.
    """

    pod: CgroupSample
    containers: Tuple[CgroupSample, ...] = ()

    @property
    def uid(self) -> str:
        ident = self.pod.identity
        return ident.pod_uid if ident is not None else self.pod.path


@dataclass(frozen=True)
class ReadCounts:
    """Problems met in one reading cycle (all skipped, none raised). ``garbled_by_file`` is keyed
    by file name (``cpu.stat`` ...), a bounded label set."""

    cgroups: int = 0  # cgroup directories read successfully (pods + containers + others)
    vanished: int = 0  # removed while being read: skipped quietly
    garbled: int = 0  # files that did not parse: that file skipped, warning rate-limited
    errors: int = 0  # other OS errors (permission ...): that file skipped, warning rate-limited
    garbled_by_file: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class CgroupReading:
    """One reading cycle: Kubernetes pods keyed by pod uid, other cgroups (standalone mode) keyed
    by path, and the cycle's problem counts."""

    root: str
    taken_at: float
    pods: Mapping[str, PodCgroups] = field(default_factory=dict)
    others: Mapping[str, CgroupSample] = field(default_factory=dict)
    counts: ReadCounts = field(default_factory=ReadCounts)
