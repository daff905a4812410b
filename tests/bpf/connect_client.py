"""The connect witness's two ends, run inside a lab namespace. Prints JSON lines.

serve HOST PORT COUNT SECONDS
    listen (HOST "::": dual stack), print {"ready": true}, accept COUNT connections (or until
    SECONDS pass), print {"accepted": n}
connect HOST OPEN_PORT N CLOSED_PORT M DROPPED_PORT K
    N blocking connects to OPEN_PORT one after another, each timed around connect() alone;
    M connects to CLOSED_PORT; K concurrent connects to DROPPED_PORT (their SYNs are dropped:
    each fails with ETIMEDOUT after the namespace's tcp_syn_retries). Prints
    {"local": address, "established_s": [...], "refused": r, "timed_out": t, "other": [...]}
"""

import errno
import json
import socket
import sys
import threading
import time


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def serve(host: str, port: int, count: int, seconds: float) -> None:
    srv = socket.socket(family(host))
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if host == "::":
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((host, port))
    srv.listen(64)
    srv.settimeout(seconds)
    print(json.dumps({"ready": True}), flush=True)
    accepted = 0
    deadline = time.monotonic() + seconds
    while accepted < count and time.monotonic() < deadline:
        try:
            conn, _ = srv.accept()
        except OSError:
            break
        accepted += 1
        conn.close()
    print(json.dumps({"accepted": accepted}), flush=True)


def attempt(host: str, port: int, out: dict, lock: threading.Lock) -> None:
    s = socket.socket(family(host))
    try:
        t0 = time.perf_counter()
        s.connect((host, port))
        dt = time.perf_counter() - t0
        with lock:
            out["established_s"].append(dt)
            out["local"] = s.getsockname()[0]
    except OSError as e:
        with lock:
            if e.errno == errno.ECONNREFUSED:
                out["refused"] += 1
            elif e.errno == errno.ETIMEDOUT:
                out["timed_out"] += 1
            else:
                out["other"].append(repr(e))
    finally:
        s.close()


def connect(host: str, open_port: int, n: int, closed_port: int, m: int, dropped_port: int,
            k: int) -> None:
    out = {"local": None, "established_s": [], "refused": 0, "timed_out": 0, "other": []}
    lock = threading.Lock()
    dropped = [threading.Thread(target=attempt, args=(host, dropped_port, out, lock))
               for _ in range(k)]
    for t in dropped:  # they take seconds to fail: run beside the others
        t.start()
    for _ in range(n):
        attempt(host, open_port, out, lock)
    for _ in range(m):
        attempt(host, closed_port, out, lock)
    for t in dropped:
        t.join()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == "serve":
        serve(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif mode == "connect":
        connect(args[0], *map(int, args[1:]))
    else:
        raise SystemExit(__doc__)
