"""The lab service: a request/response server over TCP (run inside the server namespace).

Protocol: the client sends 8 bytes ``!II`` (request id, response size); the server does
``work_us`` microseconds of CPU work, then answers ``!II`` (same id, size) followed by ``size``
bytes. One asyncio loop on one thread, so CPU pressure on the node shows up as queueing here,
as it would in a single-threaded service.

    python -m experiment.service HOST PORT [--work-us 200]

Prints ``ready`` once listening; runs until killed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import struct
import sys
import time

HEADER = struct.Struct("!II")
MAX_RESPONSE = 1 << 20


def burn(us: float) -> None:
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, work_us: float) -> None:
    try:
        while True:
            head = await reader.readexactly(HEADER.size)
            rid, size = HEADER.unpack(head)
            size = min(size, MAX_RESPONSE)
            if work_us:
                burn(work_us)
            writer.write(head[:4] + struct.pack("!I", size) + b"\0" * size)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(host: str, port: int, work_us: float) -> None:
    server = await asyncio.start_server(lambda r, w: handle(r, w, work_us), host, port,
                                        reuse_address=True, backlog=256)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiment.service")
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("--work-us", type=float, default=200.0, help="CPU work per request (µs)")
    a = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        asyncio.run(serve(a.host, a.port, a.work_us))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
