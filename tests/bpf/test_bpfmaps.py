"""The agent's own bpf(2) layer against BCC's reading of the same maps (the witness).

BCC creates and fills the maps here (in the test process, never in the agent); the layer reads
them by a duplicated descriptor and must see exactly what BCC's tables see."""

from __future__ import annotations

import ctypes
import os
import struct

import pytest

from agent.probes.bpfmaps import BpfMap, Maps, check_contract, map_info, possible_cpus

bcc = pytest.importorskip("bcc")

SRC = b"""
struct kv { u64 count; u64 sum; };
struct k20 { u8 addr[16]; u32 slot; };
BPF_HASH(h, u32, u64, 4096);
BPF_HASH(h20, struct k20, struct kv, 64);
BPF_PERCPU_ARRAY(pa, struct kv, 300);
BPF_PERCPU_HASH(ph, u32, u64, 16);
BPF_F_TABLE("array", int, u64, mm, 1000, BPF_F_MMAPABLE);
"""


@pytest.fixture(scope="module")
def loaded():
    b = bcc.BPF(text=SRC)
    maps = {n: BpfMap(os.dup(b[n.encode()].map_fd), n) for n in ("h", "h20", "pa", "ph", "mm")}
    yield b, Maps(maps)
    Maps(maps).close()
    b.cleanup()


def test_map_info_is_the_kernels_and_matches_bccs_view(loaded):
    b, maps = loaded
    for name in ("h", "h20", "pa", "ph", "mm"):
        t = b[name.encode()]
        info = maps[name].info
        leaf = getattr(t, "sLeaf", t.Leaf)
        assert (info.key_size, info.value_size, info.max_entries) == (
            ctypes.sizeof(t.Key), ctypes.sizeof(leaf), t.max_entries)
        assert info.name == name
    assert maps["pa"].info.percpu and maps["ph"].info.percpu and not maps["h"].info.percpu
    assert maps["mm"].info.mmapable and not maps["h"].info.mmapable
    assert maps["pa"].cpus == possible_cpus() == b[b"pa"].total_cpu


def test_hash_read_batched_and_key_by_key_equals_bcc(loaded):
    b, maps = loaded
    h = b[b"h"]
    for i in range(3000):  # more than one kernel bucket walk, fewer than max_entries
        h[ctypes.c_uint(i * 7)] = ctypes.c_ulong(i * i)
    want = {int(k.value): int(v.value) for k, v in h.items()}
    m = maps["h"]
    m.batch_ok = None
    got = dict(maps.items("h", "I", "Q"))
    assert m.batch_ok is True  # this kernel has BPF_MAP_LOOKUP_BATCH for hashes
    m.batch_ok = False  # the fallback: GET_NEXT_KEY from NULL + LOOKUP_ELEM
    by_key = dict(maps.items("h", "I", "Q"))
    m.batch_ok = None
    assert got == want == by_key and len(got) == 3000
    assert maps.lookup("h", struct.pack("=I", 7), "Q") == 1
    assert maps.lookup("h", struct.pack("=I", 8), "Q") is None
    with pytest.raises(ValueError, match="key of 2 bytes"):
        maps.lookup("h", b"\0\0")


def test_struct_keys_and_values(loaded):
    b, maps = loaded
    t = b[b"h20"]
    for i in range(10):
        k = t.Key()
        k.addr[15] = i
        k.slot = 100 + i
        t[k] = t.Leaf(i, i * 1000)
    want = {(bytes(k.addr), int(k.slot)): (int(v.count), int(v.sum)) for k, v in t.items()}
    got = dict(maps.items("h20", "16sI", "QQ"))
    assert got == want and len(got) == 10


def test_percpu_values_summed_over_every_possible_cpu(loaded):
    b, maps = loaded
    pa = b[b"pa"]
    ncpu = pa.total_cpu
    per_cpu = pa.Leaf(*[pa.sLeaf(c + 1, 10 * (c + 1)) for c in range(ncpu)])
    pa[ctypes.c_int(299)] = per_cpu
    pa[ctypes.c_int(5)] = pa.Leaf(*[pa.sLeaf(3, 4) for _ in range(ncpu)])
    want = {int(k.value): (sum(int(x.count) for x in v), sum(int(x.sum) for x in v))
            for k, v in pa.items()}
    got = dict(maps.items("pa", "I", "QQ"))
    assert got == want and len(got) == 300
    assert got[299] == (ncpu * (ncpu + 1) // 2, 10 * ncpu * (ncpu + 1) // 2)
    m = maps["pa"]
    m.batch_ok = False
    assert dict(maps.items("pa", "I", "QQ")) == want
    m.batch_ok = None
    ph = b[b"ph"]
    ph[ctypes.c_uint(9)] = ph.Leaf(*[ctypes.c_ulong(c + 2) for c in range(ncpu)])
    assert dict(maps.items("ph", "I", "Q")) == {9: sum(c + 2 for c in range(ncpu))}
    assert maps.lost("ph") == 0  # key 0 absent


def test_mmap_words_see_kernel_writes_without_a_syscall(loaded):
    b, maps = loaded
    mm = b[b"mm"]
    mm[ctypes.c_int(0)] = ctypes.c_ulong(11)
    mm[ctypes.c_int(999)] = ctypes.c_ulong(99)
    assert list(maps.words("mm", 0, 2)) == [11, 0]
    assert list(maps.words("mm", 998, 2)) == [0, 99]
    mm[ctypes.c_int(1)] = ctypes.c_ulong(5)  # written after the mapping: seen through it
    assert list(maps.words("mm", 0, 2)) == [11, 5]
    with pytest.raises(IndexError):
        maps.words("mm", 999, 2)
    with pytest.raises(OSError, match="not an mmap-able"):
        maps.words("h", 0, 1)


def test_contract_check_reads_the_kernels_sizes(loaded):
    _, maps = loaded
    m = {n: maps[n] for n in maps.names()}
    check_contract(m, {"h": (4, 8), "pa": (4, 16)}, {"h": 4096, "pa": 300}, "t.bpf.c")
    with pytest.raises(ValueError, match=r"map pa: key/value size \(4, 16\) \(kernel\) != declared \(4, 8\)"):
        check_contract(m, {"pa": (4, 8)}, {}, "t.bpf.c")
    with pytest.raises(ValueError, match="max_entries 4096 .kernel. != declared 4095"):
        check_contract(m, {}, {"h": 4095}, "t.bpf.c")
    with pytest.raises(ValueError, match="map nope missing from t.bpf.c"):
        check_contract(m, {"nope": (4, 8)}, {}, "t.bpf.c")


def test_info_of_a_descriptor_that_is_no_map_fails_clearly():
    r, w = os.pipe()
    try:
        with pytest.raises(OSError, match="BPF_OBJ_GET_INFO_BY_FD"):
            map_info(r)
    finally:
        os.close(r)
        os.close(w)
