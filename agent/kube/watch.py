"""Pod metadata sources with ``start()``, ``stop()`` and a thread-safe, non-blocking
``snapshot()`` returning an immutable :class:`KubeView`: :class:`PodWatcher` (a background
thread: list pods on this node with a field selector, keep them current with a watch, read the
Node object; API errors back off with jitter and the last good view stays) and
:class:`StandaloneMetadata` (no Kubernetes: the machine is the node)."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import replace
from types import MappingProxyType
from typing import Any, Callable, Dict, Optional

import requests

from agent.kube.api import ApiEndpoint, ApiError, _abort, _check, _Gone, _json
from agent.kube.parse import _q, KubeView, NodeMeta, PodMeta, parse_node, parse_pod, standalone_node
from agent.retry import backoff_delay

log = logging.getLogger(__name__)

def read_standalone_node(node_name: Optional[str] = None) -> NodeMeta:
    import psutil

    return standalone_node(node_name or socket.gethostname(), os.cpu_count() or 1, int(psutil.virtual_memory().total))


class StandaloneMetadata:
    """No Kubernetes: node name = hostname (or given), allocatable = the machine; no pods from an
    API (name them with :func:`pod_from_cgroup`)."""

    def __init__(self, node_name: Optional[str] = None) -> None:
        node = read_standalone_node(node_name)
        self._view = KubeView(source="standalone", node_name=node.name, node=node, synced=True,
                              last_success=time.monotonic())

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 0.0) -> None:
        pass

    def snapshot(self) -> KubeView:
        return self._view


class PodWatcher:
    """Pods on ``node_name`` and the Node object, kept current in a background thread.

    ``snapshot()`` never blocks on the API (it returns the last published immutable view).
    ``stop()`` sets a flag and aborts an open watch stream; it returns within ``timeout``.
    """

    def __init__(
        self,
        endpoint: ApiEndpoint,
        node_name: str,
        *,
        tenant_label: Optional[str] = None,
        timeout: float = 10.0,
        watch_seconds: int = 300,
        node_refresh_seconds: float = 60.0,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        session: Optional[requests.Session] = None,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if not node_name:
            raise ValueError("kubernetes: node_name is empty")
        self.endpoint = endpoint
        self.node_name = node_name
        self.tenant_label = tenant_label
        self.timeout = timeout
        self.watch_seconds = max(1, int(watch_seconds))
        self.node_refresh_seconds = node_refresh_seconds
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.rand = rand
        self._session = session or requests.Session()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        self._resp: Optional[requests.Response] = None
        self._pods: Dict[str, PodMeta] = {}
        self._rv: Optional[str] = None
        self._node_at = -1e18
        self._view = KubeView(source="kubernetes", node_name=node_name)
        self.skipped_pods = 0  # pod objects that did not parse

    # -- public --------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="kube-metadata", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        with self._lock:
            resp = self._resp
        _abort(resp)
        if self._thread is not None:
            self._thread.join(timeout)

    def snapshot(self) -> KubeView:
        return self._view

    # -- internals -----------------------------------------------------------------------------
    def _publish(self, **changes: Any) -> None:
        with self._lock:
            self._view = replace(self._view, pods=MappingProxyType(dict(self._pods)), **changes)

    def _get(self, path: str, params: Optional[dict] = None, stream: bool = False, read_timeout: Optional[float] = None):
        resp = self._session.get(
            self.endpoint.base_url.rstrip("/") + path, params=params, headers=self.endpoint.headers(),
            verify=self.endpoint.verify, stream=stream,
            timeout=(self.timeout, read_timeout if read_timeout is not None else self.timeout),
        )
        return resp

    def _parse_pod(self, obj: Any) -> Optional[PodMeta]:
        try:
            return parse_pod(obj, self.tenant_label)
        except ValueError as e:
            self.skipped_pods += 1
            log.warning("kubernetes: skipping a pod that does not parse: %s", e)
            return None

    def _refresh_node(self) -> None:
        what = f"GET node {self.node_name}"
        with self._get(f"/api/v1/nodes/{self.node_name}") as resp:
            _check(resp, what)
            try:
                node = parse_node(_json(resp, what))
            except ValueError as e:
                raise ApiError(200, f"{what}: {e}") from None
        self._node_at = time.monotonic()
        self._publish(node=node)

    def _relist(self) -> None:
        what = f"LIST pods on {self.node_name}"
        with self._get("/api/v1/pods", {"fieldSelector": f"spec.nodeName={self.node_name}"}) as resp:
            _check(resp, what)
            body = _json(resp, what)
        items = body.get("items") if isinstance(body, dict) else None
        rv = (body.get("metadata") or {}).get("resourceVersion") if isinstance(body, dict) else None
        if not isinstance(items, list) or not isinstance(rv, str):
            raise ApiError(200, f"{what}: not a PodList: {_q(body)}")
        pods = {}
        for obj in items:
            p = self._parse_pod(obj)
            if p is not None:
                pods[p.uid] = p
        self._pods = pods
        self._rv = rv
        self._publish(synced=True, last_success=time.monotonic(), last_error="",
                      relists_total=self._view.relists_total + 1)
        self._refresh_node()

    def _apply(self, event: Any) -> None:
        if not isinstance(event, dict) or not isinstance(event.get("object"), dict):
            raise ApiError(200, f"watch: not an event: {_q(event)}")
        kind, obj = event.get("type"), event["object"]
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410:
                raise _Gone(str(obj.get("message", "")))
            raise ApiError(code if isinstance(code, int) else 0, f"watch: ERROR event {_q(obj.get('message', obj))}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind == "BOOKMARK":
            if isinstance(rv, str):
                self._rv = rv
            return
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            raise ApiError(200, f"watch: unknown event type {_q(kind)}")
        if kind == "DELETED":
            uid = (obj.get("metadata") or {}).get("uid")
            self._pods.pop(uid, None)
        else:
            p = self._parse_pod(obj)
            if p is not None:
                self._pods[p.uid] = p
        if isinstance(rv, str):
            self._rv = rv
        self._publish(last_success=time.monotonic(), last_error="")

    def _watch_once(self) -> None:
        seconds = self.watch_seconds
        if self.node_refresh_seconds > 0:
            seconds = max(1, min(seconds, int(self.node_refresh_seconds)))
        params = {"fieldSelector": f"spec.nodeName={self.node_name}", "watch": "1",
                  "resourceVersion": self._rv, "allowWatchBookmarks": "true", "timeoutSeconds": str(seconds)}
        resp = self._get("/api/v1/pods", params, stream=True, read_timeout=seconds + self.timeout)
        with self._lock:
            self._resp = resp
        try:
            if self._stop.is_set():
                return
            _check(resp, f"WATCH pods on {self.node_name}")
            buf = b""
            for chunk in resp.iter_content(chunk_size=None):
                if self._stop.is_set():
                    return
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        try:
                            event = json.loads(line)
                        except ValueError:
                            raise ApiError(200, f"watch: garbled event {_q(line[:80])}") from None
                        self._apply(event)
                if len(buf) > 16 << 20:
                    raise ApiError(200, "watch: an event larger than 16 MiB")
        finally:
            with self._lock:
                self._resp = None
            resp.close()

    def _run(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._relist()
                elif time.monotonic() - self._node_at >= self.node_refresh_seconds:
                    self._refresh_node()
                self._watch_once()
                attempt = 0
            except _Gone:
                log.info("kubernetes: watch resourceVersion expired (410), relisting")
                self._rv = None
            except Exception as e:  # noqa: BLE001 - keep the last good view, back off, retry
                if self._stop.is_set():
                    break
                msg = f"{type(e).__name__}: {e}"
                self._publish(last_error=msg, errors_total=self._view.errors_total + 1)
                delay = backoff_delay(attempt, self.backoff_initial, self.backoff_max, self.rand)
                attempt += 1
                log.warning("kubernetes: %s; retrying in %.1fs", msg, delay)
                self._stop.wait(delay)
