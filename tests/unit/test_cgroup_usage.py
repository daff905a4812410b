"""Pure window math: CPU cores from two usage_usec readings, the counter-reset rule,
throttling and PSI stall shares."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cgroups.model import CgroupReading, CgroupSample, CpuMax, CpuStat, PodCgroups, Pressure, PsiLine
from agent.cgroups.usage import cgroup_window, counter_delta, cpu_cores, pod_windows, stall_fraction


def test_cpu_cores():
    assert cpu_cores(1_000_000, 3_000_000, 2.0) == 1.0
    assert cpu_cores(0, 500_000, 1.0) == 0.5
    assert cpu_cores(5_000_000, 1_000_000, 2.0) == 0.5  # reset: since the reset over the window
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError):
            cpu_cores(0, 1, bad)
    with pytest.raises(ValueError):
        counter_delta(-1, 5)


@given(st.integers(0, 1 << 63), st.integers(0, 1 << 63), st.floats(1e-3, 1e4))
def test_cpu_cores_never_negative(a, b, t):
    assert cpu_cores(a, b, t) >= 0


def test_stall_fraction_is_clamped():
    assert stall_fraction(0, 250_000, 1.0) == 0.25
    assert stall_fraction(0, 5_000_000, 1.0) == 1.0


def psi(total):
    return Pressure(PsiLine(0.0, 0.0, 0.0, total))


def sample(t, usage, periods=None, throttled=None, thr_usec=None, quota=None, cpu_total=0, path="p"):
    return CgroupSample(path, None, t, cpu_stat=CpuStat(usage, usage, 0, periods, throttled, thr_usec),
                        cpu_max=CpuMax(quota, 100000), cpu_pressure=psi(cpu_total))


def test_cgroup_window():
    w = cgroup_window(sample(10.0, 1_000_000, 100, 10, 0, 50000, 0),
                      sample(12.0, 2_000_000, 120, 15, 400_000, 50000, 500_000))
    assert w.cpu_cores == 0.5 and w.cpu_limit_cores == 0.5
    assert w.throttled_periods_ratio == 0.25 and w.throttled_seconds == 0.4
    assert w.cpu_some_stall == 0.25 and w.memory_some_stall is None and not w.reset
    assert cgroup_window(sample(1.0, 5), sample(1.0, 6)) is None  # no time passed
    assert cgroup_window(sample(0.0, 9_000_000), sample(1.0, 1_000_000)).reset


def test_pod_windows_only_for_pods_in_both_readings():
    a = CgroupReading("/r", 0.0, pods={"u1": PodCgroups(sample(0.0, 0, path="a")), "gone": PodCgroups(sample(0.0, 0))},
                      others={"s": sample(0.0, 0, path="s")})
    b = CgroupReading("/r", 1.0, pods={"u1": PodCgroups(sample(1.0, 2_000_000, path="a")), "new": PodCgroups(sample(1.0, 7))},
                      others={"s": sample(1.0, 100_000, path="s")})
    w = pod_windows(a, b)
    assert set(w) == {"u1", "s"} and w["u1"].cpu_cores == 2.0 and w["s"].cpu_cores == pytest.approx(0.1)
