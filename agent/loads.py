"""Small bounded loads on loopback that make each probe's events happen (the smoke test's).

Every load stays on loopback, is bounded in bytes and time, and is a context manager: it does
its work on entry (or holds its state open for the body, e.g. a full SYN backlog) and yields
a mapping of what it did. A probe's spec names its load (``Smoke.load``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Iterator

TRANSFER_BYTES = 16 * 1024 * 1024
TRANSFER_SECONDS = 2.0


def _free_port(family: int, host: str) -> int:
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def tcp_transfer(family: int = socket.AF_INET, host: str = "127.0.0.1",
                 nbytes: int = TRANSFER_BYTES, seconds: float = TRANSFER_SECONDS) -> int:
    """Send up to ``nbytes`` over loopback within ``seconds``; returns bytes sent."""
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.bind((host, 0))
    srv.listen(1)
    srv.settimeout(seconds + 2)

    def sink() -> None:
        with contextlib.suppress(OSError):
            conn, _ = srv.accept()
            with conn:
                conn.settimeout(seconds + 2)
                while conn.recv(1 << 16):
                    pass

    t = threading.Thread(target=sink, daemon=True)
    t.start()
    sent = 0
    deadline = time.monotonic() + seconds
    chunk = b"\0" * 65536
    try:
        with socket.create_connection(srv.getsockname()[:2], timeout=seconds) as c:
            while sent < nbytes and time.monotonic() < deadline:
                c.sendall(chunk)
                sent += len(chunk)
    finally:
        t.join(seconds + 3)
        srv.close()
    return sent


def refused_connects(count: int = 5, host: str = "127.0.0.1") -> int:
    """Connect to a port nobody listens on; each SYN is dropped as NO_SOCKET."""
    refused = 0
    for _ in range(count):
        port = _free_port(socket.AF_INET, host)
        with socket.socket() as s:
            s.settimeout(1)
            try:
                s.connect((host, port))
            except ConnectionRefusedError:
                refused += 1
            except OSError:
                pass
    return refused


@contextlib.contextmanager
def syn_backlog_retransmits(clients: int = 4, host: str = "127.0.0.1") -> Iterator[dict[str, int]]:
    """A listener with ``listen(0)`` that never accepts: further SYNs are dropped and each
    waiting client retransmits its SYN (first after ~1 s). Held open for the ``with`` body."""
    lst = socket.socket()
    lst.bind((host, 0))
    lst.listen(0)
    socks = []
    try:
        for _ in range(clients):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(lst.getsockname())
            socks.append(s)
        yield {"syn_backlog_clients": clients}
    finally:
        for s in socks:
            s.close()
        lst.close()


def busy_processes(seconds: float = 1.0, factor: int = 2) -> int:
    """Run ``factor`` busy processes per CPU for ``seconds``; returns how many ran."""
    n = factor * (os.cpu_count() or 1)
    code = f"import time\nend=time.monotonic()+{seconds}\nwhile time.monotonic()<end: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    for p in procs:
        try:
            p.wait(timeout=seconds + 10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return n


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@contextlib.contextmanager
def tcp_transfers() -> Iterator[dict[str, int]]:
    """A loopback TCP transfer over IPv4 and, where loopback has it, IPv6 (RTT samples)."""
    done = {"tcp_bytes_v4": tcp_transfer()}
    if ipv6_loopback():
        done["tcp_bytes_v6"] = tcp_transfer(socket.AF_INET6, "::1", nbytes=4 << 20, seconds=1)
    yield done


@contextlib.contextmanager
def closed_port_connects() -> Iterator[dict[str, int]]:
    """Connects to a port nobody listens on: each SYN is dropped as NO_SOCKET."""
    yield {"closed_port_refused": refused_connects()}


@contextlib.contextmanager
def cpu_contention() -> Iterator[dict[str, int]]:
    """Twice as many busy processes as CPUs for a second (run-queue latency)."""
    yield {"cpu_hogs": busy_processes()}


def accepted_connects(count: int = 5, host: str = "127.0.0.1") -> int:
    """Connect ``count`` times to a listener that accepts; returns the connections established
    (each is an active open on the client and a passive open on the listener)."""
    done = 0
    with socket.socket() as lst:
        lst.bind((host, 0))
        lst.listen(count)
        lst.settimeout(2)
        for _ in range(count):
            with socket.socket() as c:
                c.settimeout(2)
                try:
                    c.connect(lst.getsockname())
                    conn, _ = lst.accept()
                    conn.close()
                    done += 1
                except OSError:
                    pass
    return done


@contextlib.contextmanager
def connect_attempts() -> Iterator[dict[str, int]]:
    """Connects to a loopback listener (active and passive opens) and to a port nobody listens
    on (active opens refused)."""
    yield {"connects_established": accepted_connects(),
           "connects_refused": refused_connects(3)}
