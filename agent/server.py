"""HTTP on one port: /metrics, /healthz, /readyz, /report. Reads published state only."""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from agent.model import NodeReport, ProbeState

log = logging.getLogger(__name__)


class Server:
    """Binds HOST:PORT when made (an unusable port is found before anything else starts);
    serves once ``start`` is given what to serve."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None,
                 latest: Callable[[], NodeReport | None] | None = None,
                 payload: Callable[[], dict | None] | None = None,
                 states: Callable[[], dict[str, ProbeState]] | None = None,
                 liveness=None) -> None:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "ebpf-edge-agent"

            def log_message(self, fmt, *args):  # route access logs to debug
                log.debug("http %s " + fmt, self.client_address[0], *args)

            def _send(self, code: int, body: bytes, ctype: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_HEAD(self):  # noqa: N802
                self.do_GET()

            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(outer.registry), CONTENT_TYPE_LATEST)
                    elif path == "/healthz":
                        ok, why = outer.liveness.health()
                        self._send(200 if ok else 503, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode(),
                                   "text/plain; charset=utf-8")
                    elif path == "/readyz":
                        code, body = outer.readiness()
                        self._send(code, body.encode(), "text/plain; charset=utf-8")
                    elif path == "/report":
                        doc = outer.payload()
                        if doc is None:
                            self._send(503, b'{"error": "no report yet"}\n', "application/json")
                        else:
                            self._send(200, json.dumps(doc, indent=1).encode(), "application/json")
                    else:
                        self._send(404, b"not found: try /metrics /healthz /readyz /report\n",
                                   "text/plain; charset=utf-8")
                except BrokenPipeError:
                    pass
                except Exception:  # noqa: BLE001
                    log.exception("error serving %s", path)
                    try:
                        self._send(500, b"internal error\n", "text/plain; charset=utf-8")
                    except OSError:
                        pass

        self.registry = registry
        self.latest = latest
        self.payload = payload
        self.states = states
        self.liveness = liveness  # .health() and .ready(): (ok, why)
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def readiness(self) -> tuple[int, str]:
        lines = []
        r = self.latest()
        ready, why = self.liveness.ready()
        lines.append(f"ready: {why}" if ready else f"not ready: {why}")
        if r is not None:
            lines.append(f"report sequence={r.sequence} window={r.window_seconds}s at {r.timestamp}")
        for name, st in sorted(self.states().items()):
            lines.append(f"probe {name}: {st.state.value}" + (f" ({st.reason})" if st.reason else ""))
        return (200 if ready else 503), "\n".join(lines) + "\n"

    def start(self, **serve) -> None:
        """Start serving; keyword arguments (registry, latest, payload, states, liveness)
        replace what was given at construction."""
        for k, v in serve.items():
            if k not in ("registry", "latest", "payload", "states", "liveness"):
                raise TypeError(f"Server.start: unknown argument {k!r}")
            setattr(self, k, v)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
