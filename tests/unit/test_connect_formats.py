"""What bpf/connect.bpf.c relies on in sock:inet_sock_set_state, on every captured kernel
(5.10, 6.1, 6.12 from Debian guests, 6.18 from this host): the fields it reads exist with the
sizes it assumes, and the protocol and state numbers it compares with are the ones the
format's own print table names."""

import re

import pytest

from agent import kernel as K
from agent.config import Config
from agent.probes import ProbeUnsupported, connect, registry
from tests.conftest import kernel_fixture_dirs

C_TEXT = (Config().bpf_dir / connect.SPEC.source).read_text()
TP = "sock:inet_sock_set_state"


def c_define(name: str) -> int:
    return int(re.search(rf"^#define {name} (\d+)$", C_TEXT, re.M).group(1))


@pytest.mark.parametrize("kdir", kernel_fixture_dirs(), ids=lambda p: p.name)
def test_fields_sizes_and_numbers_match_the_c_file(kdir):
    k = K.detect([kdir], kdir / "no-btf", kdir, kdir, check_permission=False,
                 tracepoints=registry.tracepoints())
    fmt = k.tracepoint(TP)
    assert fmt is not None, f"{kdir.name}: {TP} not captured"
    f = fmt.fields
    assert f["skaddr"].size == 8 and f["saddr_v6"].size == 16
    assert f["oldstate"].size == f["newstate"].size == 4
    text = (kdir / "events" / "sock" / "inet_sock_set_state" / "format").read_text()
    assert f'{{ {c_define("CONNECT_IPPROTO_TCP")}, "IPPROTO_TCP" }}' in text
    for state in ("ESTABLISHED", "SYN_SENT", "SYN_RECV", "CLOSE"):
        assert f'{{ {c_define("CONNECT_TCP_" + state)}, "TCP_{state}" }}' in text, state
    connect.ConnectProbe(Config(), k).check_supported()


def test_a_kernel_without_the_protocol_field_is_unsupported(tmp_path):
    src = next(iter(kernel_fixture_dirs()))
    fmt = (src / "events" / "sock" / "inet_sock_set_state" / "format").read_text()
    d = tmp_path / "events" / "sock" / "inet_sock_set_state"
    d.mkdir(parents=True)
    (d / "format").write_text("\n".join(ln for ln in fmt.splitlines() if " protocol;" not in ln))
    k = K.detect([tmp_path], tmp_path / "no-btf", tmp_path, tmp_path, check_permission=False,
                 tracepoints=(TP,))
    with pytest.raises(ProbeUnsupported, match="no 'protocol' field"):
        connect.ConnectProbe(Config(), k).check_supported()
