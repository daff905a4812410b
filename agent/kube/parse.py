"""Pod and node metadata from Kubernetes objects, and the view the agent keeps (pure).

:func:`parse_quantity` (and the cpu/memory helpers), :func:`parse_pod`, :func:`parse_node`,
:func:`pod_from_cgroup`, :func:`standalone_node`; :class:`KubeView`, what is known right now.
Bad input raises ``ValueError`` quoting the offending text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Dict, Mapping, Optional, Tuple

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


def standalone_node(node_name: str, cpus: int, memory_bytes: Optional[int]) -> NodeMeta:
    """The whole machine as allocatable (there is no kubelet reservation to subtract)."""
    return NodeMeta(name=node_name, cpu_allocatable_cores=float(cpus), memory_allocatable_bytes=memory_bytes,
                    cpu_capacity_cores=float(cpus), memory_capacity_bytes=memory_bytes)


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


