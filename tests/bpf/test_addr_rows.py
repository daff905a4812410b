"""Per-address rows (bpf/addr_rows.bpf.h) under concurrent claims and overflow.

Many local addresses send at once from threads on every CPU, so row claims race. The probe's
per-address sample counts and srtt sums (rows and spill hash together) must equal, exactly,
those of a reference program on the same tracepoint that keeps one plain hash entry per
address; the row tables must stay one-to-one."""

import socket
import threading
import time

import pytest

from agent.config import Config
from agent.probes.base import ADDR_SPILL, address_rows, render_addr
from agent.probes.tcp_retrans import TcpRetransProbe
from agent.probes.tcp_rtt import TcpRttProbe
from tests.bpf.conftest import require_tracepoint

pytestmark = pytest.mark.bpf

# the same filter and address rule as bpf/tcp_rtt.bpf.c, one hash entry per address
REFERENCE = r"""
#include <linux/in6.h>  /* 5.10's tcp_probe format sizes saddr with sizeof(struct sockaddr_in6) */
struct addr_key { u8 addr[16]; };
struct seen { u64 count; u64 sum; };
BPF_HASH(ref, struct addr_key, struct seen, 1024);
TRACEPOINT_PROBE(tcp, tcp_probe)
{
    if (args->snd_nxt == args->snd_una)
        return 0;
    struct addr_key k = {};
    u16 family = *(u16 *)&args->saddr[0];
    if (family == 2) {
        k.addr[10] = 0xff; k.addr[11] = 0xff;
        __builtin_memcpy(&k.addr[12], &args->saddr[4], 4);
    } else if (family == 10) {
        __builtin_memcpy(k.addr, &args->saddr[8], 16);
    } else {
        return 0;
    }
    struct seen zero = {}, *v = ref.lookup_or_try_init(&k, &zero);
    if (v) {
        __sync_fetch_and_add(&v->count, 1);
        __sync_fetch_and_add(&v->sum, args->srtt);
    }
    return 0;
}
"""


def _send_from(src: str, port: int, nbytes: int) -> None:
    v6 = ":" in src
    with socket.socket(socket.AF_INET6 if v6 else socket.AF_INET) as c:
        c.bind((src, 0))
        c.connect(("::1" if v6 else "127.0.0.1", port))
        chunk = b"\0" * 65536
        for _ in range(nbytes // len(chunk)):
            c.sendall(chunk)


def _drain(conn: socket.socket) -> None:
    while conn.recv(1 << 16):
        pass


def _sink(srv: socket.socket, stop: threading.Event) -> None:
    srv.settimeout(0.2)
    conns = []
    while not stop.is_set():
        try:
            conn, _ = srv.accept()
        except socket.timeout:
            continue
        t = threading.Thread(target=_drain, args=(conn,), daemon=True)
        t.start()
        conns.append((conn, t))
    for conn, t in conns:
        t.join(5)
        conn.close()


def _traffic_from(sources: list[str], nbytes: int) -> None:
    srv = socket.socket(socket.AF_INET6)  # dual-stack: IPv4 clients arrive as ::ffff:a.b.c.d
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", 0))
    srv.listen(64)
    stop = threading.Event()
    sink = threading.Thread(target=_sink, args=(srv, stop), daemon=True)
    sink.start()
    senders = [threading.Thread(target=_send_from, args=(s, srv.getsockname()[1], nbytes))
               for s in sources]
    for t in senders:
        t.start()
    for t in senders:
        t.join(30)
    time.sleep(0.3)
    stop.set()
    sink.join(10)
    srv.close()


def _wait_until_closed(sources: list[str], timeout: float = 20) -> None:
    """Until no established TCP socket has one of ``sources`` as its local address: from then on
    neither the probe nor the reference sees another sample of them, so reading one after the
    other compares the same window."""
    import subprocess

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ss", "-Htn", "state", "established"], capture_output=True,
                             text=True).stdout
        local = {ln.split()[2].rsplit(":", 1)[0].strip("[]").removeprefix("::ffff:")
                 for ln in out.splitlines() if len(ln.split()) >= 4}
        if not local & set(sources):
            return
        time.sleep(0.1)
    raise AssertionError(f"connections from {sources} still open after {timeout}s")


def _check_one_to_one(maps, rows: int) -> dict[int, str]:
    by_row = address_rows(maps)
    assert all(0 <= r < rows for r in by_row)
    owners = {row: render_addr(a) for row, a in maps.items("addr_row_owner", "I", "16s")}
    assert owners == by_row  # every claimed row belongs to exactly the address that maps to it
    return by_row


class ByteCopyRttProbe(TcpRttProbe):
    """The address built byte by byte, as on a kernel whose saddr is not 8-byte aligned."""

    def defines(self):
        d = super().defines()
        d.pop("SADDR_ALIGNED")
        return d


@pytest.mark.parametrize("cls", [TcpRttProbe, ByteCopyRttProbe], ids=["word-loads", "byte-copy"])
def test_rtt_rows_and_spill_together_count_every_sample_of_every_address(kernel, cls):
    require_tracepoint(kernel, "tcp:tcp_probe")
    from bcc import BPF

    sources = [f"127.0.0.{i}" for i in range(10, 26)]  # 16 senders, 4 rows: 12 must spill
    sources += ["::1"]  # and one IPv6 address
    # the reference first: every address the probe gives a row (other loopback traffic on a
    # shared machine included) has been seen by the reference too
    ref = BPF(text=REFERENCE.encode())
    probe = cls(Config(fast_addresses=4, max_addresses=64), kernel)
    try:
        probe.start()
    except BaseException:
        ref.cleanup()
        raise
    try:
        _traffic_from(sources, 4 << 20)
        _wait_until_closed(sources)
        snap = probe.read()
        want = {render_addr(bytes(k.addr)): (int(v.count), int(v.sum))
                for k, v in ref[b"ref"].items()}
        by_row = _check_one_to_one(probe.maps, 4)
        spilled = {render_addr(a) for a, row in probe.maps.items("addr_row_of", "16s", "I")
                   if row == ADDR_SPILL}
    finally:
        ref.cleanup()
        probe.close()
    got = {a: (h.count, h.total) for a, h in snap.hists.items()}
    print(f"\nrows: {sorted(by_row.values())}; spilled: {len(spilled)}; per-address samples {got}")
    assert set(sources) <= set(want), want
    assert len(by_row) == 4 and set(by_row.values()) <= set(want)
    assert set(sources) - set(by_row.values()) <= spilled
    assert snap.lost == 0
    # samples and their srtt sum, exact, address by address, for the test's own senders (other
    # loopback traffic on the machine, e.g. 127.0.0.1, is counted too but the reference
    # attached before the probe, so its windows differ)
    assert {a: got.get(a) for a in sources} == {a: want[a] for a in sources}


def test_retrans_counts_in_rows_then_spill_then_lost(kernel):
    """One row, one spill entry: a third address's retransmits are counted as lost."""
    require_tracepoint(kernel, "tcp:tcp_retransmit_skb")
    p = TcpRetransProbe(Config(fast_addresses=1, max_addresses=1), kernel)
    p.start()
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(0)
    clients = []
    try:
        # a full accept queue drops the extra SYNs: every client retransmits its SYN
        for src in ("127.0.0.1", "127.0.0.2", "127.0.0.3") * 2:
            c = socket.socket()
            c.bind((src, 0))
            c.setblocking(False)
            c.connect_ex(lst.getsockname())
            clients.append(c)
        time.sleep(2.5)
        snap = p.read()
        by_row = _check_one_to_one(p.maps, 1)
    finally:
        for c in clients:
            c.close()
        lst.close()
        p.close()
    assert len(by_row) == 1
    assert len(snap.counts) == 2, snap  # the row and the one spill entry
    assert all(v > 0 for v in snap.counts.values())
    assert snap.lost > 0, snap
