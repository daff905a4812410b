"""The cgroup reader against fixture trees (both drivers, three runtimes, no-memory hierarchy),
vanishing and garbled cgroups, rate-limited warnings, and Hypothesis fuzzing of the whole
reading cycle: no file content raises out of it."""

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.cgroups import read as readmod
from agent.cgroups.identity import app_containers
from agent.cgroups.read import FILES, CgroupReader, read_cgroup2_root, read_cgroups

TREES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"
TREE_NAMES = ["systemd-containerd", "systemd-crio", "systemd-docker", "cgroupfs-containerd", "cgroupfs-crio", "systemd-nomemory"]
RUNTIME = {"systemd-containerd": "containerd", "systemd-crio": "cri-o", "systemd-docker": "docker",
           "cgroupfs-containerd": None, "cgroupfs-crio": "cri-o", "systemd-nomemory": "containerd"}


@pytest.mark.parametrize("tree", TREE_NAMES)
def test_fixture_tree_pods_and_containers(tree):
    expected = json.loads((TREES / tree / "EXPECTED.json").read_text())
    r = CgroupReader(str(TREES / tree), containers=True).read()
    assert set(r.pods) == set(expected)
    for uid, exp in expected.items():
        ps = r.pods[uid]
        assert ps.pod.identity.qos == exp["qos"]
        assert ps.pod.identity.driver == tree.split("-")[0]
        assert sorted(c.identity.container_id for c in ps.containers) == sorted(exp["containers"])
        assert all(c.identity.runtime == RUNTIME[tree] for c in ps.containers)
        assert ps.pod.cpu_stat is not None  # every pod cgroup has usage
        if exp["sandbox"]:
            apps = app_containers(ps.containers, [c for c in exp["containers"] if c != exp["sandbox"]])
            assert exp["sandbox"] not in {a.identity.container_id for a in apps}
    assert r.counts.vanished == 0 and r.counts.errors == 0


def test_values_limits_and_working_set():
    r = read_cgroups(str(TREES / "systemd-containerd"))
    guar = r.pods["c0ffee00-1234-4567-89ab-cdef01234567"].pod
    assert guar.cpu_max.limit_cores == 2.0
    assert guar.memory_max.limit_bytes == 1 << 30
    assert guar.working_set_bytes == (1 << 29) - (1 << 27)
    assert guar.cpu_pressure.full is not None and guar.cpu_stat.nr_throttled == 87
    best = r.pods["7e8f9a0b-aaaa-4bbb-8ccc-ddddeeeeffff"].pod
    assert best.cpu_max.limit_cores is None and best.memory_max.limit_bytes is None  # "max"
    assert best.working_set_bytes == 0  # inactive_file > current: clamped
    empty = r.pods["deadbeef-0000-4000-8000-000000000001"]
    assert empty.containers == () and empty.pod.cpu_stat.usage_usec == 0


def test_no_memory_controller_means_none_not_zero():
    r = read_cgroups(str(TREES / "systemd-nomemory"))
    pod = r.pods["7e8f9a0b-aaaa-4bbb-8ccc-ddddeeeeffff"].pod
    assert pod.memory_current is None and pod.memory_max is None and pod.memory_stat is None
    assert pod.working_set_bytes is None and pod.cpu_max is None
    assert pod.cpu_stat.usage_usec == 4_000_000 and pod.cpu_stat.nr_periods is None
    assert pod.memory_pressure is not None
    assert r.counts.garbled == 0


def test_garbled_file_skipped_counted_and_rate_limited(caplog):
    now = [0.0]
    reader = CgroupReader(str(TREES / "systemd-containerd"), containers=True, warn_interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="agent.cgroups.read"):
        for _ in range(5):
            r = reader.read()
    assert r.counts.garbled == 1 and r.counts.garbled_by_file == {"cpu.stat": 1}
    bad = [c for c in r.pods["0a1b2c3d-1111-4222-8333-444455556666"].containers if c.cpu_stat is None]
    assert len(bad) == 1 and bad[0].memory_current is not None  # only the garbled file is skipped
    assert len([m for m in caplog.messages if "garbled" in m]) == 1  # 5 cycles, one warning
    assert reader.totals["garbled"] == 5
    now[0] = 61.0
    with caplog.at_level(logging.WARNING, logger="agent.cgroups.read"):
        reader.read()
    assert "4 more like this suppressed" in caplog.messages[-1]


@pytest.fixture
def tree_copy(tmp_path):
    dst = tmp_path / "cg"
    shutil.copytree(TREES / "systemd-containerd", dst)
    return dst


def test_cgroup_vanishing_mid_read_is_skipped_quietly(tree_copy, monkeypatch, caplog):
    victim = next(tree_copy.glob("kubepods.slice/kubepods-pod*.slice"))
    real = readmod._read_small

    def read_then_vanish(path):
        if path.startswith(str(victim)) and path.endswith("cpu.max"):
            shutil.rmtree(victim)  # removed between two files of the same cgroup
        return real(path)

    monkeypatch.setattr(readmod, "_read_small", read_then_vanish)
    with caplog.at_level(logging.WARNING):
        r = CgroupReader(str(tree_copy), containers=True).read()
    assert "c0ffee00-1234-4567-89ab-cdef01234567" not in r.pods
    assert len(r.pods) == 3 and r.counts.vanished == 1
    assert not [m for m in caplog.messages if "c0ffee00" in m]


def test_permission_error_is_counted_not_raised(tree_copy, monkeypatch):
    real = readmod._read_small

    def deny(path):
        if path.endswith("memory.stat"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(readmod, "_read_small", deny)
    r = CgroupReader(str(tree_copy)).read()
    assert len(r.pods) == 4 and r.counts.errors > 0
    assert all(p.pod.memory_stat is None for p in r.pods.values())


def test_unexpected_exception_never_leaves_the_cycle(tree_copy, monkeypatch):
    monkeypatch.setattr(readmod, "identify_cgroup", lambda p: 1 / 0)
    r = CgroupReader(str(tree_copy)).read()
    assert r.pods == {} and r.counts.errors >= 1


def test_missing_root_is_an_empty_reading(tmp_path):
    r = CgroupReader(str(tmp_path / "nope"), standalone_depth=1).read()
    assert r.pods == {} and r.others == {} and r.counts.errors == 0


def test_containers_off_and_standalone_depth():
    r = CgroupReader(str(TREES / "systemd-containerd"), containers=False, standalone_depth=1).read()
    assert all(p.containers == () for p in r.pods.values())
    assert list(r.others) == ["system.slice"]  # kubepods.slice is not an "other"
    assert r.others["system.slice"].identity is None


def test_crio_conmon_is_not_a_container():
    r = read_cgroups(str(TREES / "systemd-crio"), containers=True)
    for ps in r.pods.values():
        assert not any("conmon" in c.path for c in ps.containers)


def test_read_cgroup2_root_from_mounts_file(tmp_path):
    m = tmp_path / "mounts"
    m.write_text("cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    assert read_cgroup2_root(("/sys/fs/cgroup",), str(m)) == "/sys/fs/cgroup/unified"
    fake = tmp_path / "host"
    fake.mkdir()
    (fake / "cgroup.controllers").write_text("cpu memory\n")
    assert read_cgroup2_root((str(fake),), str(tmp_path / "no-mounts")) == str(fake)
    assert read_cgroup2_root((str(tmp_path / "x"),), str(tmp_path / "no-mounts")) is None


# -- fuzzing the reader --------------------------------------------------------------------------
_names = [f for f, _, _ in FILES]
_content = st.one_of(
    st.text(max_size=120),
    st.binary(max_size=120).map(lambda b: b.decode("latin-1")),
    st.sampled_from(["max 100000\n", "max\n", "12\n", "usage_usec 1\nuser_usec 1\nsystem_usec 1\n", "", "\x00"]),
)
_SMALL = TREES / "systemd-nomemory"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contents=st.dictionaries(st.sampled_from(_names), st.one_of(st.none(), _content), max_size=7),
       as_dir=st.booleans())
def test_reader_never_raises_on_any_file_content(contents, as_dir):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "cg"
        shutil.copytree(_SMALL, root)
        for d in [p for p in root.rglob("*") if p.is_dir()]:
            for name, text in contents.items():
                f = d / name
                if text is None:
                    if f.exists():
                        f.unlink()
                elif as_dir and name == "memory.max":
                    if f.exists():
                        f.unlink()
                    f.mkdir()  # not even a file
                else:
                    f.write_bytes(text.encode("utf-8", errors="surrogatepass"))
        r = CgroupReader(str(root), standalone_depth=1).read()
        assert set(r.pods) == {"7e8f9a0b-aaaa-4bbb-8ccc-ddddeeeeffff"}
        assert r.counts.vanished == 0
