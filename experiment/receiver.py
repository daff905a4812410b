"""A local receiver of the agent's push: records every report body as it arrived.

Binds loopback only. Answers the push contract's ``{"status": "accepted"}`` for every POST to
``/metrics/report`` and keeps ``(arrival epoch, raw body, headers)``: the raw bytes are what the
placement replay later hands to the extender's ``receive_report``.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Receiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.records: list[tuple[float, bytes, dict]] = []
        self.abandoned = 0  # answers the agent no longer waited for
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if self.path.rstrip("/") == "/metrics/report":
                    with outer._lock:
                        outer.records.append((time.time(), body, dict(self.headers.items())))
                    answer, code = b'{"status": "accepted"}', 200
                else:
                    answer, code = b'{"error": "not found"}', 404
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(answer)))
                    self.end_headers()
                    self.wfile.write(answer)
                except (BrokenPipeError, ConnectionResetError):
                    # the agent gave up first (push_timeout on a loaded machine); the body is
                    # already recorded, and a retried push is deduplicated by its sequence
                    outer.abandoned += 1

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reports(self) -> list[dict]:
        """Every distinct report (by agent instance and sequence), in sequence order."""
        with self._lock:
            recs = list(self.records)
        seen: dict[tuple, dict] = {}
        for t, body, _ in recs:
            doc = json.loads(body)
            seen.setdefault((doc.get("agent_instance"), doc.get("sequence")), doc)
        return sorted(seen.values(), key=lambda d: (d.get("agent_instance", ""), d.get("sequence", 0)))

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "Receiver":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
