"""Pure cgroup v2 file parsers and the mount-table chooser, with Hypothesis fuzzing: parsers
raise only ValueError, quoting the offending text."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cgroups.model import CpuMax, MemoryMax, PsiLine
from agent.cgroups.parse import (
    choose_cgroup2_root,
    parse_cgroup2_mounts,
    parse_cpu_max,
    parse_cpu_stat,
    parse_memory_current,
    parse_memory_max,
    parse_memory_stat,
    parse_pressure,
)
from agent.cgroups.model import working_set

PARSERS = [parse_cpu_stat, parse_cpu_max, parse_memory_current, parse_memory_max, parse_memory_stat, parse_pressure]


def test_cpu_stat_with_controller():
    s = parse_cpu_stat(
        "usage_usec 8421337\nuser_usec 6011456\nsystem_usec 2409881\ncore_sched.force_idle_usec 0\n"
        "nr_periods 1204\nnr_throttled 87\nthrottled_usec 3120456\nnr_bursts 0\nburst_usec 0\n"
    )
    assert (s.usage_usec, s.user_usec, s.system_usec) == (8421337, 6011456, 2409881)
    assert (s.nr_periods, s.nr_throttled, s.throttled_usec) == (1204, 87, 3120456)


def test_cpu_stat_without_controller_has_no_throttling():
    s = parse_cpu_stat("usage_usec 5\nuser_usec 3\nsystem_usec 2\nnice_usec 0\n")
    assert s.usage_usec == 5 and s.nr_periods is None and s.throttled_usec is None


@pytest.mark.parametrize(
    "text, quoted",
    [
        ("usage_usec twelve\nuser_usec 1\nsystem_usec 1\n", "'twelve'"),
        ("usage_usec -5\nuser_usec 1\nsystem_usec 1\n", "'-5'"),
        ("user_usec 1\nsystem_usec 1\n", "usage_usec"),
        ("usage_usec 1\nusage_usec 2\nuser_usec 1\nsystem_usec 1\n", "'usage_usec'"),
        ("usage_usec 1 2\n", "'usage_usec 1 2'"),
        ("", "usage_usec"),
    ],
)
def test_cpu_stat_garbled_quotes_offending_text(text, quoted):
    with pytest.raises(ValueError, match=quoted):
        parse_cpu_stat(text)


def test_cpu_max():
    assert parse_cpu_max("max 100000\n") == CpuMax(None, 100000)
    assert parse_cpu_max("max 100000\n").limit_cores is None
    assert parse_cpu_max("150000 100000\n").limit_cores == 1.5
    assert parse_cpu_max("2500 100000").limit_cores == 0.025
    for bad in ("max", "100000", "max 0", "-1 100000", "1.5 100000", "max 100000 1", "max abc"):
        with pytest.raises(ValueError):
            parse_cpu_max(bad)


def test_memory_files():
    assert parse_memory_current("1073741824\n") == 1 << 30
    assert parse_memory_max("max\n") == MemoryMax(None)
    assert parse_memory_max("536870912\n") == MemoryMax(512 << 20)
    for bad in ("", "max max", "1e9", "-1", "a lot"):
        with pytest.raises(ValueError):
            parse_memory_max(bad)
    with pytest.raises(ValueError, match="'12k'"):
        parse_memory_current("12k\n")


def test_memory_stat_and_working_set():
    st_ = parse_memory_stat("anon 100\nfile 900\ninactive_file 600\nactive_file 300\npgfault 7\n")
    assert (st_.anon, st_.file, st_.inactive_file, st_.active_file) == (100, 900, 600, 300)
    with pytest.raises(ValueError, match="inactive_file"):
        parse_memory_stat("anon 100\nfile 900\n")
    assert working_set(1000, 600) == 400
    assert working_set(500, 600) == 0  # clamped
    assert working_set(None, 600) is None and working_set(1000, None) is None


def test_pressure_some_and_full():
    p = parse_pressure(
        "some avg10=0.12 avg60=0.31 avg300=0.07 total=1834221\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=902113\n"
    )
    assert p.some == PsiLine(0.12, 0.31, 0.07, 1834221)
    assert p.full.total_usec == 902113
    old = parse_pressure("some avg10=1.50 avg60=0.00 avg300=0.00 total=5\n")  # cpu.pressure before 5.13
    assert old.full is None and old.some.avg10 == 1.5


@pytest.mark.parametrize(
    "text",
    [
        "",
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
        "some avg10=0.00 avg60=0.00 avg300=0.00\n",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=x\n",
        "some avg10=nan avg60=0.00 avg300=0.00 total=1\n",
        "some avg10=101.00 avg60=0.00 avg300=0.00 total=1\n",
        "some avg10=0.00 avg10=0.00 avg300=0.00 total=1\n",
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=1\nsome avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
        "other avg10=0.00 avg60=0.00 avg300=0.00 total=1\n",
    ],
)
def test_pressure_garbled(text):
    with pytest.raises(ValueError):
        parse_pressure(text)


MOUNTS_HYBRID = """tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""
MOUNTS_PURE = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0\n"
MOUNTS_DAEMONSET = (
    "cgroup /sys/fs/cgroup cgroup2 ro,nosuid,nodev,noexec,relatime 0 0\n"
    "cgroup2 /host/sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0\n"
)


def test_find_cgroup2_root():
    cands = ("/sys/fs/cgroup", "/host/sys/fs/cgroup")
    assert choose_cgroup2_root(parse_cgroup2_mounts(MOUNTS_HYBRID), cands) == "/sys/fs/cgroup/unified"
    assert choose_cgroup2_root(parse_cgroup2_mounts(MOUNTS_PURE), cands) == "/sys/fs/cgroup"
    # inside the DaemonSet the host's hierarchy is the configured one, not the container's own
    assert choose_cgroup2_root(parse_cgroup2_mounts(MOUNTS_DAEMONSET), ("/host/sys/fs/cgroup",)) == "/host/sys/fs/cgroup"
    assert choose_cgroup2_root(parse_cgroup2_mounts("cgroup2 /elsewhere cgroup2 rw 0 0\n"), cands) is None
    assert parse_cgroup2_mounts("cgroup2 /a\\040b cgroup2 rw 0 0\n") == ["/a b"]
    assert choose_cgroup2_root([], cands) is None


# -- fuzzing -------------------------------------------------------------------------------------
_alphabet = st.sampled_from(list("0123456789 \n\t.=-+_maxsomefullavgtotalusec\x00é٣"))
noise = st.text(alphabet=_alphabet, max_size=200) | st.text(max_size=200)
psi_like = st.builds(
    lambda k, a, b, c, t: f"{k} avg10={a} avg60={b} avg300={c} total={t}",
    st.sampled_from(["some", "full", "sum"]),
    st.sampled_from(["0.00", "1.5", "100.00", "100.01", "nan", "inf", "", "1e3", "٣.00"]),
    st.sampled_from(["0.00", "9.99"]),
    st.sampled_from(["0.00", "-1.00"]),
    st.one_of(st.integers(-5, 1 << 70).map(str), st.just("x")),
)
keyed_like = st.lists(
    st.tuples(
        st.sampled_from(["usage_usec", "user_usec", "system_usec", "nr_periods", "inactive_file", "anon", "x"]),
        st.one_of(st.integers(-3, 1 << 66).map(str), st.sampled_from(["", "max", "1.0", "+1", "1_0", "٣"])),
    ),
    max_size=8,
).map(lambda kv: "\n".join(f"{k} {v}" for k, v in kv))
inputs = noise | psi_like | keyed_like | st.lists(psi_like, max_size=3).map("\n".join)


@settings(max_examples=400, deadline=None)
@given(text=inputs, parser=st.sampled_from(PARSERS))
def test_parsers_raise_only_value_error(text, parser):
    try:
        parser(text)
    except ValueError as e:
        assert str(e)  # says what was wrong


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300), cands=st.lists(st.text(max_size=20), max_size=3))
def test_mount_parsing_never_raises(text, cands):
    points = parse_cgroup2_mounts(text)
    choose_cgroup2_root(points, cands)


@settings(max_examples=200, deadline=None)
@given(usage=st.integers(0, (1 << 64) - 1), q=st.integers(1, 10**9), p=st.integers(1, 10**7))
def test_round_trip_valid_values(usage, q, p):
    assert parse_cpu_stat(f"usage_usec {usage}\nuser_usec 0\nsystem_usec {usage}\n").usage_usec == usage
    assert parse_cpu_max(f"{q} {p}\n").limit_cores == q / p
