"""HTTP for the extender: POST /metrics/report, /prioritize, /filter; GET /metrics, /healthz.

A thin shell around :class:`extender.app.Extender`: it reads the body (refusing one above
``max_body_bytes`` from its Content-Length with 413 before reading it), decodes JSON for the
scheduler verbs and writes the answer. A scheduler call always gets 200 with a well-formed
answer (an empty HostPriorityList, or an ExtenderFilterResult with ``Error`` set), never a 500
that would fail the scheduling cycle. TLS when a certificate and key are configured.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from extender.app import Extender
from extender.wire import error_filter_result

log = logging.getLogger(__name__)

VERBS = ("/prioritize", "/filter")


class _HTTPServer(ThreadingHTTPServer):
    """TLS, when set, is negotiated in the connection's own thread (a client that connects and
    says nothing never blocks the accept loop)."""

    daemon_threads = True
    ssl_context: ssl.SSLContext | None = None

    def finish_request(self, request, client_address):
        if self.ssl_context is not None:
            request.settimeout(10)
            try:
                request = self.ssl_context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError) as e:
                log.debug("TLS handshake with %s failed: %s", client_address[0], e)
                return
        super().finish_request(request, client_address)


class ExtenderServer:
    def __init__(self, ext: Extender, host: str, port: int) -> None:
        outer = self
        self.ext = ext

        class Handler(BaseHTTPRequestHandler):
            server_version = "ebpf-edge-extender"
            protocol_version = "HTTP/1.1"  # keep-alive: the scheduler reuses its connection
            timeout = 60  # an idle kept-alive connection is closed after this

            def log_message(self, fmt, *args):
                log.debug("http %s " + fmt, self.client_address[0], *args)

            def _send(self, code: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, code: int, doc) -> None:
                self._send(code, json.dumps(doc, separators=(",", ":")).encode())

            def do_GET(self):  # noqa: N802
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, generate_latest(outer.ext.registry), CONTENT_TYPE_LATEST)
                    elif path == "/healthz":
                        ok, why = outer.ext.health()
                        self._send(200 if ok else 503, f"{'ok' if ok else 'unhealthy'}: {why}\n".encode(),
                                   "text/plain; charset=utf-8")
                    elif path == "/nodes":
                        self._json(200, outer.ext.nodes_summary())
                    elif path.startswith("/nodes/"):
                        e = outer.ext.store.get(path[len("/nodes/"):])
                        if e is None:
                            self._json(404, {"error": "no report held for this node"})
                        else:
                            self._json(200, {"fresh": e.fresh(outer.ext.clock()), "report": e.full_report()})
                    else:
                        self._send(404, b"not found: GET /metrics /healthz /nodes /nodes/NAME; POST "
                                   b"/metrics/report /prioritize /filter\n", "text/plain; charset=utf-8")
                except BrokenPipeError:
                    pass
                except Exception:  # noqa: BLE001
                    log.exception("error serving %s", path)
                    self._fail_safe(500, b"internal error\n")

            do_HEAD = do_GET

            def _fail_safe(self, code: int, body: bytes) -> None:
                try:
                    self._send(code, body, "text/plain; charset=utf-8")
                except OSError:
                    pass

            def do_POST(self):  # noqa: N802
                path = self.path.split("?", 1)[0].rstrip("/")
                try:
                    self._post(path)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                except Exception:  # noqa: BLE001 - the verbs' answers are safe even here
                    log.exception("error serving POST %s", path)
                    if path == "/prioritize":
                        self._json(200, [])
                    elif path == "/filter":
                        self._json(200, error_filter_result("extender internal error"))
                    else:
                        self._fail_safe(500, b"internal error\n")

            def _post(self, path: str) -> None:
                limit = outer.ext.config.max_body_bytes
                try:
                    n = int(self.headers.get("Content-Length", ""))
                    if n < 0:
                        raise ValueError
                except ValueError:
                    self.close_connection = True
                    if path in VERBS:
                        return self._verb_error(path, "a Content-Length header is required")
                    self._json(411, {"status": "rejected", "error": "Content-Length required"})
                    return
                if n > limit:
                    self.close_connection = True  # the body is not read
                    if path == "/metrics/report":
                        outer.ext.m_rejected.labels("too_large").inc()
                        self._json(413, {"status": "rejected", "error": f"body of {n} bytes is above "
                                         f"the limit of {limit} (max_body_bytes)"})
                    else:
                        self._verb_error(path, f"body of {n} bytes is above the limit of {limit}")
                    return
                body = self.rfile.read(n)
                if path == "/metrics/report":
                    code, doc = outer.ext.receive_report(body, dict(self.headers.items()))
                    self._json(code, doc)
                    return
                if path not in VERBS:
                    self._send(404, b"not found: POST /metrics/report /prioritize /filter\n",
                               "text/plain; charset=utf-8")
                    return
                try:
                    args = json.loads(body)
                except (ValueError, UnicodeDecodeError) as e:
                    return self._verb_error(path, f"ExtenderArgs is not JSON: {e}")
                if path == "/prioritize":
                    self._json(200, outer.ext.prioritize(args))
                else:
                    self._json(200, outer.ext.filter(args))

            def _verb_error(self, path: str, why: str) -> None:
                log.warning("%s: %s", path, why)
                if path == "/prioritize":
                    outer.ext.m_requests.labels("prioritize", "error").inc()
                    self._json(200, [])
                else:
                    outer.ext.m_requests.labels("filter", "error").inc()
                    self._json(200, error_filter_result(why))

        self.httpd = _HTTPServer((host, port), Handler)
        c = ext.config
        self.tls = bool(c.tls_cert_file)
        if self.tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(c.tls_cert_file, c.tls_key_file)
            self.httpd.ssl_context = ctx
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="http", daemon=True)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self.httpd.server_address[0]
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def start(self) -> "ExtenderServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(2)
