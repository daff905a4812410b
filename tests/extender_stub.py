"""A scheduler-extender stand-in for tests: records pushes and misbehaves on request.

Modes: "ok" (200 {"status": "accepted"}), "stale" (200 {"status": "stale"}), "badbody" (200
with a body that is not the contract's), "status:<code>" (that HTTP status with a JSON message),
"error" (500), "garbage" (not HTTP at all), "hang" (accepts, never answers), "down" (port closed).
Binds ``host`` (any loopback address: 127.0.0.2 makes a second replica on the same port).
"""

from __future__ import annotations

import json
import socket
import threading
import time


class ExtenderStub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: tuple[str, str] | None = None) -> None:
        self.host = host
        self._tls = None
        if tls:  # (certfile, keyfile): serve https
            import ssl

            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self.mode = "ok"
        self.received: list[dict] = []
        self.headers: list[dict] = []
        self.hits = 0
        self._lock = threading.Lock()
        if port:
            self.port = port
        else:
            probe = socket.socket()
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
            probe.close()
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self.host}:{self.port}"

    def up(self) -> None:
        if self._sock is not None:
            return
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
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
        if self._tls is not None:
            try:
                conn.settimeout(5)
                conn = self._tls.wrap_socket(conn, server_side=True)
            except OSError:  # the client refused our certificate
                conn.close()
                return
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
            if mode.startswith("status:"):
                code = int(mode.split(":", 1)[1])
                msg = json.dumps({"error": f"stub refuses with {code}"}).encode()
                conn.sendall(b"HTTP/1.1 %d Refused\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (code, len(msg), msg))
                return
            if line.startswith("POST /metrics/report"):
                with self._lock:
                    self.received.append(json.loads(body))
                    self.headers.append(headers)
                answer = {"ok": b'{"status": "accepted"}', "stale": b'{"status": "stale"}',
                          "badbody": b"<html>ok</html>"}.get(mode, b'{"status": "accepted"}')
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                             % (len(answer), answer))
            else:
                conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
