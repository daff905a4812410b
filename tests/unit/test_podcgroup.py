"""The pure parts of the live pod-cgroup test (tests/e2e/podcgroup.py): why the controllers are
unavailable, the witness's reading of the files, and the bounds of a window figure."""

import pytest

from tests.e2e.podcgroup import (Files, parse_proc_cgroups, rate_bounds, ratio_bounds,
                                 why_unavailable, witness_values)

# this host (hybrid layout: cpu and memory on v1 hierarchies, v2 at /sys/fs/cgroup/unified)
HOST_PROC_CGROUPS = """\
#subsys_name	hierarchy	num_cgroups	enabled
cpuset	3	4	1
cpu	1	4	1
cpuacct	2	4	1
blkio	7	4	1
memory	4	102	1
devices	5	4	1
freezer	6	4	1
net_cls	0	3	1
perf_event	0	3	1
net_prio	0	3	1
hugetlb	0	3	1
pids	8	4	1
"""
# a kernel-matrix guest: virtme-ng mounts a pure cgroup2, no v1 hierarchy at all
GUEST_PROC_CGROUPS = """\
#subsys_name	hierarchy	num_cgroups	enabled
cpuset	0	1	1
cpu	0	1	1
cpuacct	0	1	1
memory	0	1	1
pids	0	1	1
"""
GUEST_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc\n"


def test_this_hosts_layout_names_the_v1_hierarchies():
    why = why_unavailable("/sys/fs/cgroup/unified", "hugetlb\n", "\n", HOST_PROC_CGROUPS)
    assert why == ("the cgroup v2 hierarchy at /sys/fs/cgroup/unified has no cpu or memory "
                   "controller (cpu: bound to cgroup v1 hierarchy 1; memory: bound to cgroup v1 "
                   "hierarchy 4)")


def test_guest_with_both_enabled_at_the_root_can_run():
    assert why_unavailable("/sys/fs/cgroup", GUEST_CONTROLLERS, "cpu memory\n", GUEST_PROC_CGROUPS) is None
    assert why_unavailable("/sys/fs/cgroup", GUEST_CONTROLLERS, "cpuset cpu io memory pids",
                           GUEST_PROC_CGROUPS) is None


def test_offered_but_not_enabled_at_the_root_is_enabled_only_in_a_guest():
    why = why_unavailable("/sys/fs/cgroup", GUEST_CONTROLLERS, "cpu\n", GUEST_PROC_CGROUPS)
    assert why == ("memory not enabled in /sys/fs/cgroup/cgroup.subtree_control, which this test "
                   "writes only in a kernel-matrix guest (KMATRIX_ROOT_CONTROLLERS=1)")
    why = why_unavailable("/sys/fs/cgroup", GUEST_CONTROLLERS, "", GUEST_PROC_CGROUPS)
    assert why.startswith("cpu and memory not enabled in")
    assert why_unavailable("/sys/fs/cgroup", GUEST_CONTROLLERS, "", GUEST_PROC_CGROUPS,
                           may_enable_root=True) is None
    # a guest's permission does not make a controller bound to v1 available
    assert "bound to cgroup v1" in why_unavailable("/sys/fs/cgroup/unified", "hugetlb", "",
                                                   HOST_PROC_CGROUPS, may_enable_root=True)


def test_disabled_absent_and_unreadable():
    disabled = GUEST_PROC_CGROUPS.replace("memory\t0\t1\t1", "memory\t0\t1\t0")
    assert "memory: disabled (cgroup_disable=" in why_unavailable("/r", "cpu", "", disabled)
    no_memcg = "".join(ln + "\n" for ln in GUEST_PROC_CGROUPS.splitlines() if "memory" not in ln)
    assert "memory: not in /proc/cgroups" in why_unavailable("/r", "cpu", "", no_memcg)
    assert why_unavailable("/r", "cpu", "", None) == "the cgroup v2 hierarchy at /r has no memory controller (memory: absent)"
    garbled = why_unavailable("/r", "", "", "cpu one 1 1\n")
    assert "has no cpu or memory controller" in garbled and "'cpu one 1 1'" in garbled


@pytest.mark.parametrize("line", ["cpu 1 4", "cpu 1 4 2", "cpu x 4 1", "cpu 1 4 1 extra"])
def test_parse_proc_cgroups_quotes_a_bad_line(line):
    with pytest.raises(ValueError, match="is not 'name hierarchy num_cgroups enabled'") as e:
        parse_proc_cgroups("#subsys_name\thierarchy\tnum_cgroups\tenabled\n" + line + "\n")
    assert repr(line) in str(e.value)


def test_parse_proc_cgroups():
    got = parse_proc_cgroups(HOST_PROC_CGROUPS)
    assert got["cpu"] == (1, True) and got["hugetlb"] == (0, True) and len(got) == 12


STAT = "usage_usec 2000000\nuser_usec 1900000\nsystem_usec 100000\nnr_periods 40\nnr_throttled 38\nthrottled_usec 1900000\n"
PSI = "some avg10=48.00 avg60=20.00 avg300=5.00 total=1500000\nfull avg10=48.00 avg60=20.00 avg300=5.00 total=1400000\n"
MEMSTAT = "anon 67108864\nfile 4096\ninactive_file 4096\nactive_file 0\n"


def test_witness_values():
    v = witness_values({"cpu.stat": STAT, "cpu.max": "50000 100000\n", "cpu.pressure": PSI,
                        "memory.current": "67239936\n", "memory.max": "134217728\n",
                        "memory.stat": MEMSTAT, "memory.pressure": PSI.replace("1500000", "7")})
    assert v == {"usage_usec": 2000000, "nr_periods": 40, "nr_throttled": 38,
                 "throttled_usec": 1900000, "cpu_some_usec": 1500000, "memory_some_usec": 7,
                 "working_set": 67239936 - 4096, "memory_max": 134217728, "cpu_max_cores": 0.5}


def test_witness_values_absent_files_and_max():
    v = witness_values({"cpu.stat": "usage_usec 5\nuser_usec 5\nsystem_usec 0\n", "cpu.max": "max 100000\n",
                        "cpu.pressure": None, "memory.current": None, "memory.max": "max\n",
                        "memory.stat": None, "memory.pressure": None})
    assert v["usage_usec"] == 5 and v["nr_periods"] is None and v["cpu_some_usec"] is None
    assert v["working_set"] is None and v["memory_max"] is None and v["cpu_max_cores"] is None


def _f(t0, t1, **values):
    return Files(t0, t1, values)


def test_rate_bounds_bracket_the_agents_reading():
    # a counter growing 0.5 s/s; each bracket takes 0.1 s
    b1, a1 = _f(0.0, 0.1, u=0), _f(0.2, 0.3, u=150_000)
    b2, a2 = _f(4.0, 4.1, u=2_000_000), _f(4.2, 4.3, u=2_150_000)
    lo, hi = rate_bounds(b1, a1, b2, a2, "u")
    # the agent read between b and a at each end, and its clock between their inner stamps
    assert lo == pytest.approx((2_000_000 - 150_000) / 1e6 / (4.2 - 0.1))
    assert hi == pytest.approx((2_150_000 - 0) / 1e6 / (4.1 - 0.2))
    assert lo < 0.5 < hi
    # any agent reading inside the brackets gives a figure inside the bounds
    for u1, t1, u2, t2 in [(0, 0.1, 2_150_000, 4.2), (150_000, 0.2, 2_000_000, 4.1),
                           (75_000, 0.15, 2_075_000, 4.15)]:
        assert lo <= (u2 - u1) / 1e6 / (t2 - t1) <= hi
    assert rate_bounds(b1, a1, b2, _f(4.2, 4.3, u=None), "u") is None
    assert rate_bounds(b1, a1, b2, a2, "absent") is None


def test_rate_bounds_refuse_a_window_shorter_than_its_brackets():
    with pytest.raises(ValueError, match="longer than zero"):
        rate_bounds(_f(0, 1, u=0), _f(2, 3, u=0), _f(1.5, 1.8, u=0), _f(4, 5, u=0), "u")


def test_ratio_bounds():
    b1, a1 = _f(0, 0.1, n=0, d=0), _f(0.2, 0.3, n=1, d=2)
    b2, a2 = _f(4, 4.1, n=38, d=40), _f(4.2, 4.3, n=40, d=42)
    assert ratio_bounds(b1, a1, b2, a2, "n", "d") == (pytest.approx(37 / 42), 1.0)  # 40/38 clamped
    idle = _f(0, 0.1, n=5, d=9)
    assert ratio_bounds(idle, idle, idle, idle, "n", "d") == (0.0, 1.0)  # no period elapsed
    assert ratio_bounds(b1, a1, b2, _f(4.2, 4.3, n=None, d=1), "n", "d") is None
