"""Pod and node metadata: from the Kubernetes API (``requests``), or standalone without one.

Pure parts: :func:`parse_quantity` (and the cpu/memory helpers), :func:`parse_pod`,
:func:`parse_node`, :func:`backoff_delay`, :func:`pod_from_cgroup`, :func:`standalone_node`.
IO parts: :func:`in_cluster_endpoint` (service account files, environment),
:class:`PodWatcher` (a background thread: list pods on this node with a field selector, keep them
current with a watch, read the Node object; API errors back off with jitter and the last good view
stays), :class:`StandaloneMetadata` (no Kubernetes). Both expose ``start()``, ``stop()`` and a
thread-safe, non-blocking ``snapshot()`` returning an immutable :class:`KubeView`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import requests

log = logging.getLogger(__name__)

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

# -- quantities -----------------------------------------------------------------------------------
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1),
            "k": Decimal("1e3"), "M": Decimal("1e6"), "G": Decimal("1e9"), "T": Decimal("1e12"),
            "P": Decimal("1e15"), "E": Decimal("1e18")}


def _q(text: object) -> str:
    s = repr(text)
    return s if len(s) <= 80 else s[:77] + "..."


def parse_quantity(text: str) -> Decimal:
    """A Kubernetes resource quantity (``"3920m"``, ``"16Gi"``, ``"16384Ki"``, ``"1.5"``,
    ``"1e3"``, ``"100M"``) as an exact Decimal in base units."""
    if not isinstance(text, str):
        raise ValueError(f"quantity: {_q(text)} is not a string")
    s = text.strip()
    i = 0
    if s[:1] in "+-":
        i = 1
    while i < len(s) and (s[i].isascii() and (s[i].isdigit() or s[i] == ".")):
        i += 1
    number, suffix = s[:i], s[i:]
    if number in ("", "+", "-", ".", "+.", "-.") or number.count(".") > 1:
        raise ValueError(f"quantity: {_q(text)} has no number")
    try:
        value = Decimal(number)
    except InvalidOperation:
        raise ValueError(f"quantity: {_q(text)} has no number") from None
    if suffix in _BINARY:
        return value * _BINARY[suffix]
    if suffix in _DECIMAL:
        return value * _DECIMAL[suffix]
    if suffix[:1] in ("e", "E"):
        exp = suffix[1:]
        body = exp[1:] if exp[:1] in "+-" else exp
        if body.isascii() and body.isdigit() and len(body) <= 3:
            return value * (Decimal(10) ** int(exp))
    raise ValueError(f"quantity: {_q(text)} has an unknown suffix {_q(suffix)}")


def parse_cpu_cores(text: str) -> float:
    """``"3920m"`` -> 3.92 cores."""
    v = parse_quantity(text)
    if v < 0:
        raise ValueError(f"cpu: {_q(text)} is negative")
    return float(v)


def parse_memory_bytes(text: str) -> int:
    """``"16Gi"`` -> 17179869184; fractions of a byte round up, as Kubernetes does."""
    v = parse_quantity(text)
    if v < 0:
        raise ValueError(f"memory: {_q(text)} is negative")
    return int(v.to_integral_value(rounding="ROUND_CEILING"))


# -- pods and nodes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ContainerResources:
    name: str
    cpu_limit_cores: Optional[float] = None  # None: no limit
    memory_limit_bytes: Optional[int] = None
    cpu_request_cores: Optional[float] = None
    memory_request_bytes: Optional[int] = None


@dataclass(frozen=True)
class PodMeta:
    uid: str
    namespace: str
    name: str
    tenant: str  # the tenant label's value, else the namespace
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    pod_ips: Tuple[str, ...] = ()
    host_network: bool = False
    qos: str = ""  # "guaranteed" | "burstable" | "besteffort" ("" unknown)
    phase: str = ""
    node_name: str = ""
    containers: Tuple[ContainerResources, ...] = ()
    container_ids: Tuple[str, ...] = ()  # runtime ids without "containerd://" (init + app + ephemeral)

    @property
    def cpu_limit_cores(self) -> Optional[float]:
        """Sum of the containers' limits; None (unlimited) when any container has none."""
        vals = [c.cpu_limit_cores for c in self.containers]
        return None if not vals or None in vals else sum(vals)

    @property
    def memory_limit_bytes(self) -> Optional[int]:
        vals = [c.memory_limit_bytes for c in self.containers]
        return None if not vals or None in vals else sum(vals)


@dataclass(frozen=True)
class NodeMeta:
    name: str
    cpu_allocatable_cores: Optional[float]
    memory_allocatable_bytes: Optional[int]
    cpu_capacity_cores: Optional[float] = None
    memory_capacity_bytes: Optional[int] = None
    labels: Mapping[str, str] = field(default_factory=dict)


def _str_map(obj: Any, what: str) -> Dict[str, str]:
    if obj is None:
        return {}
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise ValueError(f"{what}: {_q(obj)} is not a map of strings")
    return dict(obj)


def _req_str(d: Any, key: str, what: str) -> str:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, str) or not v:
        raise ValueError(f"{what}: no {key} in {_q(d)}")
    return v


def _resources(c: Any) -> ContainerResources:
    if not isinstance(c, dict):
        raise ValueError(f"pod container: {_q(c)} is not an object")
    res = c.get("resources") or {}
    lim = res.get("limits") or {} if isinstance(res, dict) else {}
    req = res.get("requests") or {} if isinstance(res, dict) else {}
    if not isinstance(lim, dict) or not isinstance(req, dict):
        raise ValueError(f"pod container: resources {_q(res)} are not maps")

    def cpu(d):
        return parse_cpu_cores(d["cpu"]) if "cpu" in d else None

    def mem(d):
        return parse_memory_bytes(d["memory"]) if "memory" in d else None

    return ContainerResources(name=str(c.get("name", "")), cpu_limit_cores=cpu(lim), memory_limit_bytes=mem(lim),
                              cpu_request_cores=cpu(req), memory_request_bytes=mem(req))


_QOS = {"Guaranteed": "guaranteed", "Burstable": "burstable", "BestEffort": "besteffort"}


def _qos_from_spec(containers: Tuple[ContainerResources, ...]) -> str:
    if not containers:
        return ""
    if all(c.cpu_limit_cores is None and c.memory_limit_bytes is None and c.cpu_request_cores is None
           and c.memory_request_bytes is None for c in containers):
        return "besteffort"
    if all(c.cpu_limit_cores is not None and c.memory_limit_bytes is not None
           and c.cpu_request_cores in (None, c.cpu_limit_cores)
           and c.memory_request_bytes in (None, c.memory_limit_bytes) for c in containers):
        return "guaranteed"
    return "burstable"


def parse_pod(obj: Any, tenant_label: Optional[str] = None) -> PodMeta:
    """A Pod object (as the API returns it) -> PodMeta. Tenant: the ``tenant_label`` label's
    value when the pod has it, else the namespace."""
    if not isinstance(obj, dict):
        raise ValueError(f"pod: {_q(obj)} is not an object")
    meta = obj.get("metadata")
    uid = _req_str(meta, "uid", "pod metadata")
    namespace = _req_str(meta, "namespace", "pod metadata")
    name = _req_str(meta, "name", "pod metadata")
    labels = _str_map(meta.get("labels"), "pod labels")
    annotations = _str_map(meta.get("annotations"), "pod annotations")
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if not isinstance(spec, dict) or not isinstance(status, dict):
        raise ValueError(f"pod {namespace}/{name}: spec or status is not an object")
    conts = spec.get("containers") or []
    if not isinstance(conts, list):
        raise ValueError(f"pod {namespace}/{name}: containers {_q(conts)} is not a list")
    containers = tuple(_resources(c) for c in conts)
    ips = tuple(ip.get("ip") for ip in (status.get("podIPs") or []) if isinstance(ip, dict) and isinstance(ip.get("ip"), str))
    if not ips and isinstance(status.get("podIP"), str) and status["podIP"]:
        ips = (status["podIP"],)
    ids = []
    for key in ("initContainerStatuses", "containerStatuses", "ephemeralContainerStatuses"):
        for cs in status.get(key) or []:
            cid = cs.get("containerID") if isinstance(cs, dict) else None
            if isinstance(cid, str) and cid:
                ids.append(cid.split("://", 1)[-1].lower())
    qos = _QOS.get(status.get("qosClass"), "") or _qos_from_spec(containers)
    tenant = labels.get(tenant_label) if tenant_label else None
    return PodMeta(
        uid=uid, namespace=namespace, name=name, tenant=tenant or namespace,
        labels=MappingProxyType(labels), annotations=MappingProxyType(annotations), pod_ips=ips,
        host_network=spec.get("hostNetwork") is True, qos=qos, phase=str(status.get("phase") or ""),
        node_name=str(spec.get("nodeName") or ""), containers=containers, container_ids=tuple(ids),
    )


def parse_node(obj: Any) -> NodeMeta:
    """A Node object -> NodeMeta (allocatable and capacity of cpu and memory)."""
    if not isinstance(obj, dict):
        raise ValueError(f"node: {_q(obj)} is not an object")
    name = _req_str(obj.get("metadata"), "name", "node metadata")
    status = obj.get("status") or {}
    if not isinstance(status, dict):
        raise ValueError(f"node {name}: status {_q(status)} is not an object")

    def q(section: str, key: str, conv):
        d = status.get(section) or {}
        if not isinstance(d, dict):
            raise ValueError(f"node {name}: {section} {_q(d)} is not a map")
        return conv(d[key]) if key in d else None

    return NodeMeta(
        name=name,
        cpu_allocatable_cores=q("allocatable", "cpu", parse_cpu_cores),
        memory_allocatable_bytes=q("allocatable", "memory", parse_memory_bytes),
        cpu_capacity_cores=q("capacity", "cpu", parse_cpu_cores),
        memory_capacity_bytes=q("capacity", "memory", parse_memory_bytes),
        labels=MappingProxyType(_str_map(obj["metadata"].get("labels"), "node labels")),
    )


def pod_from_cgroup(path: str, pod_uid: Optional[str] = None, qos: str = "") -> PodMeta:
    """Standalone naming: a pod known only by its cgroup. A Kubernetes pod cgroup (``pod_uid``
    given) is named ``pod<uid>``; any other cgroup by its path. Namespace and tenant are ""."""
    if pod_uid:
        return PodMeta(uid=pod_uid, namespace="", name=f"pod{pod_uid}", tenant="", qos=qos)
    return PodMeta(uid=path, namespace="", name=path, tenant="")


def standalone_node(node_name: str, cpus: int, memory_bytes: int) -> NodeMeta:
    """The whole machine as allocatable (there is no kubelet reservation to subtract)."""
    return NodeMeta(name=node_name, cpu_allocatable_cores=float(cpus), memory_allocatable_bytes=memory_bytes,
                    cpu_capacity_cores=float(cpus), memory_capacity_bytes=memory_bytes)


def read_standalone_node(node_name: Optional[str] = None) -> NodeMeta:
    import psutil

    return standalone_node(node_name or socket.gethostname(), os.cpu_count() or 1, int(psutil.virtual_memory().total))


# -- the view ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KubeView:
    """What is known right now. ``synced`` once the first list succeeded; after that, errors
    leave the last good view in place with ``last_error`` set and ``last_success`` ageing."""

    source: str  # "kubernetes" | "standalone"
    node_name: str
    node: Optional[NodeMeta] = None
    pods: Mapping[str, PodMeta] = field(default_factory=dict)  # by uid
    synced: bool = False
    last_success: Optional[float] = None  # time.monotonic() of the last good answer
    last_error: str = ""
    errors_total: int = 0
    relists_total: int = 0


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


def backoff_delay(attempt: int, initial: float, cap: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with jitter: uniformly within [d/2, d] where d = min(cap, initial·2^attempt)."""
    d = min(cap, initial * (2 ** min(attempt, 32)))
    return d / 2 + rand() * d / 2


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
