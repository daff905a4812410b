"""Reaching the Kubernetes API server: the endpoint (in-cluster service account or a URL), and
answers checked into errors the watcher can act on (IO: files, environment, ``requests``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional

import requests

from agent.kube.parse import _q

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# -- the API -------------------------------------------------------------------------------------
class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Gone(Exception):
    """The watch's resourceVersion is too old (410): relist."""


@dataclass(frozen=True)
class ApiEndpoint:
    """Where and how to reach the API server. ``token_file`` is re-read on every connection (bound
    service account tokens rotate); ``ca_file`` None verifies against the system CAs."""

    base_url: str
    token_file: Optional[str] = None
    token: Optional[str] = None
    ca_file: Optional[str] = None
    verify_tls: bool = True

    def headers(self) -> Dict[str, str]:
        h = {"Accept": "application/json", "User-Agent": "ebpf-edge-agent"}
        token = self.token
        if self.token_file:
            with open(self.token_file, encoding="utf-8") as f:
                token = f.read().strip()
        if token:
            h["Authorization"] = f"Bearer {token}"
        return h

    @property
    def verify(self):
        if not self.verify_tls:
            return False
        return self.ca_file or True


def in_cluster_endpoint(
    sa_dir: str = SA_DIR,
    host: Optional[str] = None,
    port: Optional[str] = None,
    environ: Optional[Mapping[str, str]] = None,
) -> ApiEndpoint:
    """The in-cluster endpoint: ``KUBERNETES_SERVICE_HOST``/``_PORT`` (or ``host``/``port``) and
    the service account's token and CA from ``sa_dir``. Raises ValueError naming what is missing."""
    env = os.environ if environ is None else environ
    host = host or env.get("KUBERNETES_SERVICE_HOST", "")
    port = str(port or env.get("KUBERNETES_SERVICE_PORT", "443"))
    if not host:
        raise ValueError("kubernetes: KUBERNETES_SERVICE_HOST is not set (not in a pod? use standalone mode)")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    token_file = os.path.join(sa_dir, "token")
    if not os.path.isfile(token_file):
        raise ValueError(f"kubernetes: no service account token at {token_file}")
    ca = os.path.join(sa_dir, "ca.crt")
    return ApiEndpoint(base_url=f"https://{host}:{port}", token_file=token_file,
                       ca_file=ca if os.path.isfile(ca) else None)


def _check(resp: requests.Response, what: str) -> None:
    if resp.status_code == 200:
        return
    try:
        body = resp.text[:200]
    except Exception:  # noqa: BLE001 - the body is only for the message
        body = ""
    hint = ""
    if resp.status_code in (401, 403):
        hint = " (RBAC: the agent's service account needs get/list/watch on pods and get on nodes)"
    if resp.status_code == 410:
        raise _Gone(what)
    raise ApiError(resp.status_code, f"{what}: HTTP {resp.status_code}{hint} {body}".rstrip())


def _json(resp: requests.Response, what: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise ApiError(resp.status_code, f"{what}: answer is not JSON: {_q(resp.text[:80])}") from None


def _abort(resp: Optional[requests.Response]) -> None:
    """Unblock a thread reading ``resp``'s stream: shut the socket down, then close."""
    if resp is None:
        return
    try:
        sock = getattr(getattr(resp.raw, "_connection", None), "sock", None)
        if sock is None:
            sock = resp.raw._fp.fp.raw._sock  # http.client's socket, under urllib3
        sock.shutdown(socket.SHUT_RDWR)
    except Exception:  # noqa: BLE001 - best effort; close() below and the join timeout remain
        pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001
        pass


