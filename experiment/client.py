"""The lab client: requests at a fixed rate, every request's latency recorded (open loop).

Request *i* is due at ``t0 + i / rate`` whatever happened to the ones before (open loop: a slow
server doesn't slow the client down, so there is no coordinated omission), and its latency is
measured from that due time to the last byte of the answer. Requests go over a pool of
persistent connections (a new one is opened when all are busy, up to ``--max-conns``); a request
that takes longer than ``--timeout`` is an error (its connection is dropped), as is a refused or
reset connection.

    python -m experiment.client HOST PORT --rate 200 --seconds 60 --out requests.csv

Writes one line per request, ``due_epoch_s,latency_ms,ok`` (ok: 1, or 0 with latency = time to
the error), flushed every second; prints ``started <epoch>`` when the first request is due and
``done <n>`` at the end. SIGTERM ends it cleanly (the file is complete up to that point).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
import time

HEADER = struct.Struct("!II")


class Pool:
    def __init__(self, host: str, port: int, max_conns: int) -> None:
        self.host, self.port = host, port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.max = max_conns
        self.freed = asyncio.Condition()

    async def get(self):
        while True:
            if self.idle:
                return self.idle.pop()
            if self.open < self.max:
                self.open += 1
                try:
                    return await asyncio.open_connection(self.host, self.port)
                except BaseException:
                    self.open -= 1
                    raise
            async with self.freed:
                await self.freed.wait()

    async def put(self, conn) -> None:
        self.idle.append(conn)
        async with self.freed:
            self.freed.notify()

    async def discard(self, conn) -> None:
        self.open -= 1
        if conn is not None:
            conn[1].close()
        async with self.freed:
            self.freed.notify()


async def one(pool: Pool, rid: int, size: int, due: float, timeout: float, out: list) -> None:
    conn = None
    ok = 0
    try:
        async def exchange():
            nonlocal conn
            conn = await pool.get()
            r, w = conn
            w.write(HEADER.pack(rid & 0xFFFFFFFF, size))
            await w.drain()
            head = await r.readexactly(HEADER.size)
            got_id, n = HEADER.unpack(head)
            await r.readexactly(n)
            if got_id != rid & 0xFFFFFFFF:
                raise ValueError("answer out of order")

        await asyncio.wait_for(exchange(), timeout - max(0.0, time.monotonic() - due))
        ok = 1
    except (asyncio.TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        ok = 0
    latency = (time.monotonic() - due) * 1000.0
    if ok:
        await pool.put(conn)
    else:
        await pool.discard(conn)
    out.append((due, latency, ok))


async def run(a: argparse.Namespace) -> int:
    pool = Pool(a.host, a.port, a.max_conns)
    done: list = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    f = open(a.out, "w", buffering=1 << 16)
    t0 = time.monotonic() + 0.2
    wall0 = time.time() + (t0 - time.monotonic())
    print(f"started {wall0:.6f}", flush=True)
    tasks: set[asyncio.Task] = set()
    n_total = int(a.seconds * a.rate) if a.seconds > 0 else None
    written = 0
    last_flush = time.monotonic()

    def flush(all_=False) -> None:
        nonlocal written
        for due, lat, ok in done:
            f.write(f"{wall0 + (due - t0):.6f},{lat:.3f},{ok}\n")
        written += len(done)
        done.clear()
        f.flush()

    i = 0
    while not stop.is_set() and (n_total is None or i < n_total):
        due = t0 + i / a.rate
        wait = due - time.monotonic()
        if wait > 0:
            try:
                await asyncio.wait_for(stop.wait(), wait)
                break
            except asyncio.TimeoutError:
                pass
        t = asyncio.create_task(one(pool, i, a.size, due, a.timeout, done))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
        if time.monotonic() - last_flush > 1.0:
            flush()
            last_flush = time.monotonic()
    if tasks:
        await asyncio.wait(tasks, timeout=a.timeout + 1)
    flush()
    f.close()
    print(f"done {written}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiment.client")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--rate", type=float, default=200.0, help="requests per second")
    ap.add_argument("--seconds", type=float, default=0, help="0: until SIGTERM")
    ap.add_argument("--size", type=int, default=16384, help="response bytes")
    ap.add_argument("--timeout", type=float, default=1.0, help="seconds before a request is an error")
    ap.add_argument("--max-conns", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    return asyncio.run(run(a))


if __name__ == "__main__":
    sys.exit(main())
