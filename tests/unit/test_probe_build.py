"""Each probe builds itself from the fields the kernel really has (captured formats), without
loading anything: defines, support checks and reason naming."""

import dataclasses
import re
from pathlib import Path

import pytest

from agent import kernel as K
from agent.config import Config
from agent.config import ConfigError
from agent.probes import ProbeUnsupported, registry
from agent.probes.base import ProbeError, inline_includes, load_source, render_addr
from agent.probes.skb_drop import DROP_SLOTS, OUT_OF_RANGE, UNKNOWN, SkbDropProbe
from tests.conftest import kernel_fixture, kernel_fixture_dirs

PROBE_CLASSES = {name: cls for name, (_, cls) in registry.PROBES.items()}
TPS = registry.tracepoints()


def kinfo(prefix):
    root = kernel_fixture(prefix)
    k = K.detect([root], root / "no-btf", root, root, check_permission=False, tracepoints=TPS)
    return k


@pytest.mark.parametrize("kdir", kernel_fixture_dirs(), ids=lambda p: p.name)
def test_all_probes_supported_on_every_captured_kernel(kdir):
    k = K.detect([kdir], kdir / "no-btf", kdir, kdir, check_permission=False, tracepoints=TPS)
    for cls in PROBE_CLASSES.values():
        p = cls(Config(), k)
        p.check_supported()  # raises if a needed field is missing
        assert all(f.startswith("-I") or f.startswith("-D") for f in p.cflags())


def test_skb_drop_without_reason_field_counts_unknown():
    p = SkbDropProbe(Config(), kinfo("5.10"))
    assert "HAVE_REASON" not in p.defines()
    assert p.reason_name(DROP_SLOTS - 1) == UNKNOWN


def test_skb_drop_with_reason_field_names_from_running_kernel():
    p = SkbDropProbe(Config(), kinfo("6.12"))
    assert p.defines()["HAVE_REASON"] == 1
    assert p.reason_name(3) == "NO_SOCKET"
    assert p.reason_name(11) == "NETFILTER_DROP"
    assert p.reason_name(DROP_SLOTS - 2) == OUT_OF_RANGE
    p61 = SkbDropProbe(Config(), kinfo("6.1"))
    assert p61.reason_name(2) == "NO_SOCKET" and p61.reason_name(7) == "NETFILTER_DROP"


def test_non_drops_are_not_named_as_drops():
    k = kinfo("6.18")
    p = SkbDropProbe(Config(), k)
    p.reasons = K.resolve_drop_reasons(k.tracepoint("skb:kfree_skb"),
                                       {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1})
    assert p.reason_name(0) is None and p.reason_name(1) is None
    assert p.reason_name(3) == "NO_SOCKET"


def test_runqlat_uses_mask_from_format_and_wakeup_new_when_present():
    k = kinfo("6.1")
    p = PROBE_CLASSES["runqlat"](Config(), k)
    d = p.defines()
    assert d["RUNNABLE_STATE_MASK"] == "0xff" and d["HAVE_WAKEUP_NEW"] == 1
    formats = dict(k.formats)
    formats["sched:sched_wakeup_new"] = None
    p2 = PROBE_CLASSES["runqlat"](Config(), dataclasses.replace(k, formats=formats))
    assert "HAVE_WAKEUP_NEW" not in p2.defines()
    assert "sched:sched_wakeup_new" not in p2.attached()


def test_histogram_layout_defines_match_python_layout():
    k = kinfo("6.18")
    for name in ("tcp_rtt", "runqlat"):
        p = PROBE_CLASSES[name](Config(), k)
        d = p.defines()
        assert d["HIST_SUB_BITS"] == p.layout.sub_bits == 5
        assert d["HIST_MAX_SHIFT"] == p.layout.max_shift
        assert p.layout.slots >= 700


@pytest.mark.parametrize("tp,probe", [("tcp:tcp_probe", "tcp_rtt"),
                                      ("tcp:tcp_retransmit_skb", "tcp_retrans"),
                                      ("skb:kfree_skb", "skb_drop"),
                                      ("sched:sched_switch", "runqlat")])
def test_missing_tracepoint_is_unsupported_with_its_name(tp, probe):
    k = kinfo("6.18")
    formats = dict(k.formats)
    formats[tp] = None
    p = PROBE_CLASSES[probe](Config(), dataclasses.replace(k, formats=formats))
    with pytest.raises(ProbeUnsupported, match=tp):
        p.check_supported()


def test_no_tracefs_is_unsupported():
    k = dataclasses.replace(kinfo("6.18"), tracefs=None)
    with pytest.raises(ProbeUnsupported, match="tracefs"):
        PROBE_CLASSES["tcp_rtt"](Config(), k).check_supported()


def test_addresses_render_ipv4_mapped_as_ipv4():
    assert render_addr(bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])) == "10.0.0.1"
    assert render_addr(b"\xfd" + bytes(14) + b"\x01") == "fd00::1"
    assert render_addr(bytes(15) + b"\x01") == "::1"


def test_config_validation_names_key_and_value():
    with pytest.raises(ConfigError, match="probes: 'bogus' is not valid: one of tcp_rtt"):
        registry.check_config(Config(probes=("bogus",)))
    with pytest.raises(ValueError, match="max_addresses: 0 is not valid"):
        Config(max_addresses=0)
    with pytest.raises(ValueError, match="fast_addresses: 5000 is not valid: an integer within 1..4096"):
        Config(fast_addresses=5000)


def test_bpf_h_includes_are_pasted_in_with_line_markers():
    files = {"rows.bpf.h": "int helper(void) { return m.lookup(&k) != 0; }\n"}
    text = '#include "common.h"\n#include "rows.bpf.h"\nint main_line3;\n'
    out = inline_includes(text, "probe.bpf.c", files.__getitem__)
    assert out.splitlines() == ['#include "common.h"', '#line 1 "rows.bpf.h"',
                                "int helper(void) { return m.lookup(&k) != 0; }",
                                '#line 3 "probe.bpf.c"', "int main_line3;"]
    assert inline_includes('#include "common.h"\n', "p.c", files.__getitem__) == '#include "common.h"\n'


def test_every_probe_source_loads_with_its_headers_inlined(tmp_path):
    cfg = Config()
    for cls in PROBE_CLASSES.values():
        text = load_source(cfg.bpf_dir / cls.spec.source)
        assert re.search(r'^#include "[^"]+\.bpf\.h"', text, re.M) is None  # nothing left for BCC
        if "addr_row_of" in {m.name for m in cls.spec.maps}:  # the per-address fast path
            assert "addr_claim_row" in text
        if cls.spec.lost_map:
            assert "count_lost" in text and cls.spec.lost_map in text
    (tmp_path / "p.bpf.c").write_text('#include "gone.bpf.h"\n')
    with pytest.raises(ProbeError, match="p.bpf.c: cannot read included gone.bpf.h"):
        load_source(tmp_path / "p.bpf.c")


@pytest.mark.parametrize("kdir", kernel_fixture_dirs(), ids=lambda p: p.name)
def test_tcp_rtt_loads_address_words_only_where_saddr_is_aligned(kdir):
    k = K.detect([kdir], kdir / "no-btf", kdir, kdir, check_permission=False, tracepoints=TPS)
    assert PROBE_CLASSES["tcp_rtt"](Config(), k).defines().get("SADDR_ALIGNED") == 1  # offset 8 on all
    fmt = k.tracepoint("tcp:tcp_probe")
    shifted = dataclasses.replace(fmt, fields={**fmt.fields, "saddr": dataclasses.replace(
        fmt.fields["saddr"], offset=12)})
    k2 = dataclasses.replace(k, formats={**k.formats, "tcp:tcp_probe": shifted})
    assert "SADDR_ALIGNED" not in PROBE_CLASSES["tcp_rtt"](Config(), k2).defines()


def test_include_path_is_absolute_even_for_a_relative_bpf_dir(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    p = PROBE_CLASSES["skb_drop"](Config(bpf_dir=Path("bpf")), kinfo("6.18"))
    assert p.cflags()[0] == f"-I{tmp_path / 'bpf'}"


@pytest.mark.parametrize("prefix, has_reason", [("5.10", False), ("6.12", True)])
def test_skb_drop_says_where_its_reason_names_come_from_when_started_with_the_others(
        monkeypatch, prefix, has_reason):
    """The agent's start-up (ProbeSet.start_all: one compiling child for every probe) never
    calls a probe's start(): the detail the smoke test and the kernel matrix show ("no reason
    field" on 5.10) must be set on that path too. The child is stubbed: it fails the compile."""
    from agent import sampler
    from agent.probes.loader import CompileFailed

    def no_child(reqs, timeout, on_result, argv=None):
        for r in reqs:
            on_result(r.name, CompileFailed("stub: no compile here"))

    monkeypatch.setattr(sampler, "compile_batch", no_child)
    p = SkbDropProbe(Config(), dataclasses.replace(kinfo(prefix), bpf_permitted=True))
    states = sampler.ProbeSet([p]).start_all()
    assert "stub: no compile here" in states["skb_drop"].reason  # it went through the batch
    want = p.reasons.source if has_reason else "no reason field: counted as 'unknown'"
    assert want and p.detail["reason_names"] == want
