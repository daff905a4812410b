"""cgroup v2 readers: ``parse`` (pure file parsers), ``identity`` (pure: path -> pod/container),
``usage`` (pure window math), ``read`` (IO below a root given by the caller), ``model`` (types)."""

from agent.cgroups.identity import app_containers, identify_cgroup, normalize_container_id
from agent.cgroups.model import (
    CgroupIdentity,
    CgroupReading,
    CgroupSample,
    CpuMax,
    CpuStat,
    MemoryMax,
    MemoryStat,
    PodCgroups,
    Pressure,
    PsiLine,
    ReadCounts,
    working_set,
)
from agent.cgroups.read import CgroupReader, read_cgroup2_root, read_cgroups
from agent.cgroups.usage import CgroupWindow, cgroup_window, counter_delta, cpu_cores, pod_windows, stall_fraction

__all__ = [
    "app_containers", "identify_cgroup", "normalize_container_id",
    "CgroupIdentity", "CgroupReading", "CgroupSample", "CpuMax", "CpuStat", "MemoryMax",
    "MemoryStat", "PodCgroups", "Pressure", "PsiLine", "ReadCounts", "working_set",
    "CgroupReader", "read_cgroup2_root", "read_cgroups",
    "CgroupWindow", "cgroup_window", "counter_delta", "cpu_cores", "pod_windows", "stall_fraction",
]
