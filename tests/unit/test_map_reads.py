"""The pure parts of bench/map_reads.py: the pods' addresses, what a snapshot's keys name, the
sized max_cgroups and the percentiles."""

import pytest

from bench.map_reads import p90, seen_in, sized_max_cgroups, source_address


def test_source_addresses_are_distinct_loopback_addresses_never_a_network_or_broadcast_octet():
    addrs = [source_address(i) for i in range(250 * 250)]
    assert len(set(addrs)) == len(addrs)
    assert (addrs[0], addrs[249], addrs[250], addrs[-1]) == (
        "127.1.0.1", "127.1.0.250", "127.1.1.1", "127.1.249.250")
    assert all(a.startswith("127.1.") and 1 <= int(a.rsplit(".", 1)[1]) <= 250 for a in addrs)


@pytest.mark.parametrize("i", [-1, 250 * 250])
def test_a_pod_index_outside_the_range_is_refused(i):
    with pytest.raises(ValueError, match=str(i)):
        source_address(i)


def test_seen_counts_addresses_in_every_key_shape_and_only_the_pods_cgroups():
    addrs = {source_address(0), source_address(1)}
    keys = ["127.1.0.1", "failed/127.1.0.2", "passive/127.1.0.1", "127.0.0.1", "",
            "cgroup:42", "cgroup:43", "cgroup:x", "cgroup_no_row"]
    assert seen_in(keys, addrs, {42, 44}, "cgroup:") == {"addresses": 2, "cgroups": 1}
    # a build without per-cgroup keys
    assert seen_in(["cgroup:42"], addrs, {42}, None) == {"addresses": 0, "cgroups": 0}


def test_sized_max_cgroups_only_where_the_default_rows_leave_no_room():
    assert sized_max_cgroups(0) is None
    assert sized_max_cgroups(200) is None  # 400 of 512
    assert sized_max_cgroups(1000) == 2512


def test_p90_is_nearest_rank():
    assert p90([float(x) for x in range(1, 11)]) == 9.0
    assert p90([float(x) for x in range(1, 51)]) == 45.0
    assert p90([3.0]) == 3.0
