"""The bpf(2) layer's pure parts: CPU lists, per-CPU sums, decoding through Maps (no kernel)."""

import struct

import pytest

from agent.probes import bpfmaps
from agent.probes.bpfmaps import BpfMap, MapInfo, Maps, _sum_u64_columns, parse_cpu_list, round8


def test_cpu_list_counts_up_to_the_highest_cpu():
    assert parse_cpu_list("0-1\n") == 2
    assert parse_cpu_list("0") == 1
    assert parse_cpu_list("0-3,6,8-9") == 10  # per-CPU copies are indexed up to the highest
    for bad in ("", "a-b", "0-", ","):
        with pytest.raises(ValueError, match="not a CPU list"):
            parse_cpu_list(bad)


def test_round8_and_columns():
    assert [round8(n) for n in (1, 8, 12, 16, 20)] == [8, 8, 16, 16, 24]
    # two entries, three CPUs, two u64 fields each
    raw = struct.pack("=12Q", 1, 10, 2, 20, 3, 30, 4, 40, 5, 50, 6, 60)
    assert _sum_u64_columns(raw, 2, 3) == [[6, 15], [60, 150]]
    assert _sum_u64_columns(struct.pack("=2Q", 7, 9), 1, 1) == [[7, 9]]


class _FakeMap(BpfMap):
    """A BpfMap over canned bytes (no descriptor)."""

    def __init__(self, info: MapInfo, cpus: int, keys: bytes, values: bytes) -> None:
        self.fd, self.name, self.info, self._mm, self.batch_ok = -1, info.name, info, None, None
        self.cpus = cpus if info.percpu else 1
        self.stride = round8(info.value_size) if info.percpu else info.value_size
        self.value_bytes = self.stride * self.cpus
        self._raw = (keys, values)

    def raw(self):
        return self._raw


def test_maps_decode_struct_keys_and_sum_percpu_values_with_padding():
    # a per-CPU hash with a 12-byte value (u64 + u32): each CPU's copy padded to 16 bytes
    info = MapInfo(type=5, id=1, key_size=20, value_size=12, max_entries=8, flags=0, name="m")
    keys = b"".join(struct.pack("=16sI", bytes([i]) * 16, i) for i in (1, 2))
    vals = b"".join(struct.pack("=QI4x", 10 * i + c, c) for i in (1, 2) for c in range(2))
    maps = Maps({"m": _FakeMap(info, 2, keys, vals)})
    got = maps.items("m", "16sI", "QI")
    assert got == [((b"\x01" * 16, 1), (21, 1)), ((b"\x02" * 16, 2), (41, 1))]
    assert maps.items("m")[0] == (keys[:20], vals[:32])  # raw: key bytes, every CPU's copy


def test_maps_u64_fast_path_equals_the_generic_decoding():
    info = MapInfo(type=6, id=1, key_size=4, value_size=16, max_entries=3, flags=0, name="h")
    keys = struct.pack("=3I", 0, 1, 2)
    vals = struct.pack("=12Q", *range(12))  # 3 entries x 2 CPUs x (count, sum)
    m = _FakeMap(info, 2, keys, vals)
    fast = Maps({"h": m}).items("h", "I", "QQ")
    slow = [(k, m.value(vals[k * 32:(k + 1) * 32], "QQ")) for k in range(3)]
    assert fast == slow == [(0, (2, 4)), (1, (10, 12)), (2, (18, 20))]


def test_unknown_map_name_lists_the_probes_maps():
    with pytest.raises(KeyError, match=r"map nope not among the probe's maps \(a, b\)"):
        Maps({"b": None, "a": None})["nope"]


def test_unknown_machine_has_no_syscall_number(monkeypatch):
    monkeypatch.setattr(bpfmaps.platform, "machine", lambda: "pdp11")
    with pytest.raises(OSError, match="pdp11"):
        bpfmaps._nr()
