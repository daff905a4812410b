"""Traffic for the lab, run inside a namespace. Prints one line when ready / done.

sink HOST PORT SECONDS               accept connections and discard what arrives
send HOST PORT SECONDS [RATE_BPS]    connect and send for SECONDS, optionally paced
source HOST PORT SECONDS [RATE_BPS]  accept connections and send to each (paced) for SECONDS
drain HOST PORT SECONDS              connect and read until the peer closes or SECONDS pass
"""

import socket
import sys
import threading
import time


def sink(host: str, port: int, seconds: float) -> None:
    srv = _listen(host, port, seconds)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds

    def drain(conn):
        conn.settimeout(max(1.0, deadline - time.monotonic()))
        try:
            while conn.recv(1 << 16):
                pass
        except OSError:
            pass
        conn.close()

    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except OSError:
            break
        threading.Thread(target=drain, args=(conn,), daemon=True).start()


def _listen(host: str, port: int, seconds: float) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    srv = socket.socket(fam, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6 and host == "::":
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
    srv.bind((host, port))
    srv.listen(16)
    srv.settimeout(seconds)
    return srv


def source(host: str, port: int, seconds: float, rate_bps: float) -> None:
    srv = _listen(host, port, seconds)
    print("ready", flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except OSError:
            break
        threading.Thread(target=_pump, args=(conn, deadline - time.monotonic(), rate_bps),
                         daemon=True).start()


def drain(host: str, port: int, seconds: float) -> None:
    c = socket.create_connection((host, port), timeout=10)
    print("connected", c.getsockname()[0], flush=True)
    deadline = time.monotonic() + seconds
    c.settimeout(1)
    got = 0
    while time.monotonic() < deadline:
        try:
            data = c.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            break
        got += len(data)
    c.close()
    print("received", got, flush=True)


def send(host: str, port: int, seconds: float, rate_bps: float) -> None:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    c = socket.socket(fam, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect((host, port))
    print("connected", c.getsockname()[0], flush=True)
    _pump(c, seconds, rate_bps)


def _pump(c: socket.socket, seconds: float, rate_bps: float) -> None:
    c.settimeout(10)
    chunk = b"\0" * 16384
    sent = 0
    t0 = time.monotonic()
    deadline = t0 + seconds
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        if rate_bps > 0:
            ahead = sent * 8 / rate_bps - (now - t0)
            if ahead > 0:
                time.sleep(min(ahead, deadline - now))
                continue
        try:
            sent += c.send(chunk)
        except socket.timeout:
            continue
    c.close()
    print("sent", sent, flush=True)


if __name__ == "__main__":
    mode, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    if mode == "sink":
        sink(host, port, seconds)
    elif mode == "source":
        source(host, port, seconds, rate)
    elif mode == "drain":
        drain(host, port, seconds)
    else:
        send(host, port, seconds, rate)
