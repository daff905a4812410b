"""A scheduler-extender stand-in for tests: records pushes and misbehaves on request.

Modes: "ok" (200), "error" (500), "garbage" (not HTTP at all), "hang" (accepts, never answers),
"down" (port closed).
"""

from __future__ import annotations

import json
import socket
import threading
import time


class ExtenderStub:
    def __init__(self) -> None:
        self.mode = "ok"
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.hits = 0
        self._lock = threading.Lock()
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        if self._sock is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        s.settimeout(0.2)
        self._sock = s
        self._stop.clear()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def down(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(2)
        if self._sock:
            self._sock.close()
        self._sock = None

    close = down

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (socket.timeout, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _read_request(self, conn: socket.socket) -> tuple[str, dict, bytes]:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                raise ConnectionError("client closed")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in
                   (ln.split(":", 1) for ln in lines[1:] if ":" in ln)}
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            body += conn.recv(65536)
        return lines[0], headers, body

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                line, headers, body = self._read_request(conn)
            except (OSError, ValueError):
                return
            with self._lock:
                self.hits += 1
            mode = self.mode
            if mode == "hang":
                time.sleep(30)
                return
            if mode == "garbage":
                conn.sendall(b"\x00\x01 this is not http\r\n\r\n")
                return
            if mode == "error":
                conn.sendall(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 4\r\n"
                             b"Connection: close\r\n\r\noops")
                return
            if line.startswith("POST /metrics/report"):
                with self._lock:
                    self.received.append(json.loads(body))
                    self.headers.append(headers)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
