"""Tracepoint formats captured from real kernels (5.10, 6.1, 6.12, 6.18), drop-reason
resolution, BTF enum parsing and the other pure kernel-facing parsers."""

import struct
from pathlib import Path

import pytest

from agent import kernel as K
from tests.conftest import kernel_fixture, kernel_fixture_dirs

TPS = [("tcp", "tcp_probe"), ("tcp", "tcp_retransmit_skb"), ("skb", "kfree_skb"),
       ("sched", "sched_wakeup"), ("sched", "sched_wakeup_new"), ("sched", "sched_switch")]


def fmt(kernel_prefix, system, event):
    return K.read_format(kernel_fixture(kernel_prefix), system, event)


def test_fixtures_cover_old_and_new_kernels():
    names = [p.name for p in kernel_fixture_dirs()]
    assert any(n.startswith("5.10") for n in names) and any(n.startswith("6.") for n in names)


@pytest.mark.parametrize("kdir", kernel_fixture_dirs(), ids=lambda p: p.name)
@pytest.mark.parametrize("system,event", TPS)
def test_every_captured_format_parses(kdir, system, event):
    f = K.read_format(kdir, system, event)
    assert f is not None and f.name == event and f.id > 0
    assert f.fields["common_type"].offset == 0


def test_missing_tracepoint_reads_as_none(tmp_path):
    (tmp_path / "events").mkdir()
    assert K.read_format(tmp_path, "skb", "kfree_skb") is None


def test_field_details_5_10():
    probe = fmt("5.10", "tcp", "tcp_probe")
    assert not probe.has("family")  # 5.10: family only inside the sockaddr
    assert probe.fields["saddr"].size == 28
    assert probe.fields["saddr"].ctype == "__u8[sizeof(struct sockaddr_in6)]"
    assert probe.fields["srtt"].ctype == "__u32"
    assert not fmt("5.10", "skb", "kfree_skb").has("reason")
    assert not fmt("5.10", "tcp", "tcp_retransmit_skb").has("family")
    assert fmt("5.10", "tcp", "tcp_retransmit_skb").has("saddr_v6")
    assert fmt("5.10", "sched", "sched_wakeup").has("success")


def test_field_details_6_x():
    for k in ("6.1", "6.12", "6.18"):
        assert fmt(k, "skb", "kfree_skb").has("reason")
        assert fmt(k, "tcp", "tcp_probe").has("family")
    assert fmt("6.1", "skb", "kfree_skb").fields["reason"].offset == 28
    assert fmt("6.12", "skb", "kfree_skb").has("rx_sk")
    assert fmt("6.12", "skb", "kfree_skb").fields["reason"].offset == 36
    assert fmt("6.18", "tcp", "tcp_probe").fields["sock_cookie"].signed is False


@pytest.mark.parametrize("kdir", kernel_fixture_dirs(), ids=lambda p: p.name)
def test_switch_state_mask_is_task_report_max_minus_one_everywhere(kdir):
    f = K.read_format(kdir, "sched", "sched_switch")
    assert K.parse_switch_state_mask(f.print_fmt) == 0xFF


def test_switch_state_mask_garbage_raises_quoting_text():
    with pytest.raises(ValueError, match="no prev_state mask"):
        K.parse_switch_state_mask('"prev_comm=%s", REC->prev_comm')
    with pytest.raises(ValueError, match="not a constant"):
        K.parse_switch_state_mask("(REC->prev_state & (__import__('os'))) ? x")


def test_drop_reason_numbers_move_between_kernels_and_names_follow():
    def reasons(k):
        return K.resolve_drop_reasons(fmt(k, "skb", "kfree_skb"), None)

    r61, r612, r618 = reasons("6.1"), reasons("6.12"), reasons("6.18")
    assert r61.name(2) == "NO_SOCKET" and r612.name(3) == "NO_SOCKET" and r618.name(3) == "NO_SOCKET"
    assert r61.name(7) == "NETFILTER_DROP" and r618.name(12) == "NETFILTER_DROP"
    assert r61.source == "format"
    assert not r618.is_drop(max(r618.names))  # MAX sentinel is not a drop
    assert r618.name(999) == "REASON_999"


def test_5_10_has_no_reason_table():
    r = K.resolve_drop_reasons(fmt("5.10", "skb", "kfree_skb"), None)
    assert r.names == {} and r.source == "none"


def test_btf_fills_non_drop_names_missing_from_the_format_table():
    btf = {"SKB_NOT_DROPPED_YET": 0, "SKB_CONSUMED": 1, "SKB_DROP_REASON_NOT_SPECIFIED": 2,
           "SKB_DROP_REASON_NO_SOCKET": 3}
    r = K.resolve_drop_reasons(fmt("6.18", "skb", "kfree_skb"), btf)
    assert r.name(0) == "NOT_DROPPED_YET" and not r.is_drop(0)
    assert r.name(1) == "CONSUMED" and not r.is_drop(1)
    assert r.is_drop(3) and r.source == "format+btf"


def test_print_symbolic_ignores_unexpanded_macros_and_other_fields():
    pf = ('"x=%s y=%s", __print_symbolic(REC->state, { TCP_ESTABLISHED, "E" }, { 7, "C" }), '
          '__print_symbolic(REC->reason, { 2, "A" }, { 0x10, "B" })')
    assert K.parse_print_symbolic(pf, "state") == {7: "C"}
    assert K.parse_print_symbolic(pf, "reason") == {2: "A", 16: "B"}
    assert K.parse_print_symbolic(pf, "missing") == {}


@pytest.mark.parametrize("text,needle", [
    ("name: x\nID: 12\nformat:\n\tfield:int a;\toffset:zz;\tsize:4;\tsigned:1;\nprint fmt: \"\"", "field line"),
    ("name: x\nID: abc\nprint fmt: \"\"", "bad ID"),
    ("garbage", "missing name"),
])
def test_garbled_format_raises_value_error_quoting_it(text, needle):
    with pytest.raises(ValueError, match=needle):
        K.parse_format("skb", text)


def _btf_blob(enums):
    """A minimal BTF blob: one INT, then ENUM types, then one STRUCT (to test skipping)."""
    strings = b"\0"
    def s(name):
        nonlocal strings
        off = len(strings)
        strings += name.encode() + b"\0"
        return off
    types = struct.pack("<III", s("int"), (1 << 24), 4) + struct.pack("<I", 32)
    types += struct.pack("<III", s("pair"), (4 << 24) | 2, 8) + struct.pack("<III", s("a"), 1, 0) \
        + struct.pack("<III", s("b"), 1, 32)
    for name, members in enums.items():
        types += struct.pack("<III", s(name), (6 << 24) | len(members), 4)
        for m, v in members.items():
            types += struct.pack("<Ii", s(m), v)
    hdr = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return hdr + types + strings


def test_parse_btf_enum_finds_the_named_enum_after_other_kinds():
    blob = _btf_blob({"other": {"X": 5}, "skb_drop_reason": {"SKB_NOT_DROPPED_YET": 0,
                                                             "SKB_DROP_REASON_NO_SOCKET": 3}})
    assert K.parse_btf_enum(blob, "skb_drop_reason") == {"SKB_NOT_DROPPED_YET": 0,
                                                         "SKB_DROP_REASON_NO_SOCKET": 3}
    assert K.parse_btf_enum(blob, "absent") is None


def test_parse_btf_rejects_garbage():
    with pytest.raises(ValueError, match="magic"):
        K.parse_btf_enum(b"\x00" * 64, "x")
    with pytest.raises(ValueError, match="too short"):
        K.parse_btf_enum(b"\x9f\xeb", "x")


@pytest.mark.skipif(not Path("/sys/kernel/btf/vmlinux").exists(), reason="kernel has no BTF")
def test_real_vmlinux_btf_has_drop_reasons():
    e = K.read_btf_enum(Path("/sys/kernel/btf/vmlinux"), "skb_drop_reason")
    assert e is not None and e.get("SKB_NOT_DROPPED_YET") == 0


def test_detect_reports_cgroup2_mounts_from_proc(tmp_path):
    (tmp_path / "self").mkdir()
    (tmp_path / "self" / "mounts").write_text(
        "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n"
        "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    k = K.detect([tmp_path / "nope"], tmp_path / "btf", tmp_path, tmp_path, check_permission=False)
    assert k.cgroup2_mounts == ("/sys/fs/cgroup/unified",)


def test_detect_headers_matching_foreign_none(tmp_path):
    build = tmp_path / "6.9.0" / "build"
    (build / "include" / "generated").mkdir(parents=True)
    assert K.detect_headers(tmp_path, "7.0.0").kind == "none"
    (build / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.9.0"\n')
    assert K.detect_headers(tmp_path, "6.9.0").kind == "matching"
    (build / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-5"\n')
    h = K.detect_headers(tmp_path, "6.9.0")
    assert h.kind == "foreign" and h.release == "6.1.0-5" and "6.1.0-5" in h.describe()


def test_detect_against_a_fixture_tree_without_tracefs(tmp_path):
    k = K.detect([tmp_path / "nope"], tmp_path / "btf", tmp_path, tmp_path, check_permission=False)
    assert k.tracefs is None and all(v is None for v in k.formats.values())
    assert k.headers.kind == "none" and k.btf_path is None


def test_a_tracefs_this_process_may_not_enter_counts_as_absent(tmp_path, monkeypatch):
    # as non-root, stat() of /sys/kernel/tracing/events raises EACCES: check-kernel must still
    # answer (it crashed with a traceback before), and the next candidate is tried
    from pathlib import Path

    from agent.kernel import find_tracefs

    closed, usable = tmp_path / "closed", tmp_path / "open"
    (closed / "events").mkdir(parents=True)
    (usable / "events").mkdir(parents=True)
    real = Path.is_dir

    def is_dir(self):
        if self == closed / "events":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "is_dir", is_dir)
    assert find_tracefs([closed, usable]) == usable
    assert find_tracefs([closed]) is None


def test_detect_headers_prefers_the_hosts_matching_tree_then_the_images(tmp_path):
    image = tmp_path / "image-tree"
    (image / "include" / "generated").mkdir(parents=True)
    (image / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.1.0-57-amd64"\n')
    mods = tmp_path / "modules"
    # no host headers at all: the image's tree, handed to BCC, and check-kernel says why
    h = K.detect_headers(mods, "6.18.0", image)
    assert (h.kind, h.path, h.bcc_source, h.release) == ("image", str(image), str(image), "6.1.0-57-amd64")
    assert "the host has none for 6.18.0" in h.describe() and "image's generic tree" in h.describe()
    # the host's headers of another kernel: still the image's tree, with the host's release named
    build = mods / "6.18.0" / "build"
    (build / "include" / "generated").mkdir(parents=True)
    (build / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.12.1"\n')
    h = K.detect_headers(mods, "6.18.0", image)
    assert h.kind == "image" and "are of 6.12.1, not 6.18.0" in h.why
    # the host's matching headers win, and BCC keeps its default
    (build / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.18.0"\n')
    h = K.detect_headers(mods, "6.18.0", image)
    assert (h.kind, h.path, h.bcc_source) == ("matching", str(build), "")
    # an image path without a tree is not used
    (build / "include" / "generated" / "utsrelease.h").write_text('#define UTS_RELEASE "6.12.1"\n')
    h = K.detect_headers(mods, "6.18.0", tmp_path / "missing")
    assert h.kind == "foreign" and h.why == "no generic tree in the image"
    assert K.detect_headers(tmp_path / "none", "6.18.0", tmp_path / "missing").kind == "none"
