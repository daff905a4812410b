"""kube-scheduler's extender wire format (pure), ``k8s.io/kube-scheduler/extender/v1``.

The Go types there carry no JSON tags, so the scheduler sends and expects the Go field names,
capitalised: ExtenderArgs ``{"Pod", "Nodes", "NodeNames"}``, ExtenderFilterResult ``{"Nodes",
"NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}``, HostPriorityList
``[{"Host", "Score"}]``. Go decodes JSON keys case-insensitively, so any case is accepted here
on input; answers always use the capitalised names. ``Pod`` and the Node objects inside
``Nodes`` (a v1.NodeList) are Kubernetes API objects with their usual lower-camel JSON names,
looked up case-insensitively as well.

``nodeCacheCapable: true``: the scheduler sends ``NodeNames`` (and ``Nodes`` null) and expects
``NodeNames`` back; ``false``: full ``Nodes`` and ``Nodes`` back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

MAX_EXTENDER_PRIORITY = 10  # extenderv1.MaxExtenderPriority
MIN_EXTENDER_PRIORITY = 0


def ci(d: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """``d[key]`` with the key matched case-insensitively (an exact match first)."""
    if not isinstance(d, Mapping):
        return default
    if key in d:
        return d[key]
    low = key.lower()
    for k, v in d.items():
        if isinstance(k, str) and k.lower() == low:
            return v
    return default


@dataclass(frozen=True)
class ExtenderArgs:
    pod: Mapping[str, Any] | None
    node_names: tuple[str, ...]
    nodes: tuple[Mapping[str, Any], ...] | None  # the Node objects (nodeCacheCapable: false)
    node_list: Mapping[str, Any] | None  # the NodeList as sent (its apiVersion/kind/metadata)

    @property
    def cache_capable(self) -> bool:
        return self.nodes is None


def node_name(node: Any) -> str:
    name = ci(ci(node, "metadata"), "name")
    if not isinstance(name, str) or not name:
        raise ValueError("a Node in Nodes.items has no metadata.name")
    return name


def parse_args(doc: Any) -> ExtenderArgs:
    """ExtenderArgs from decoded JSON; ValueError says what is wrong."""
    if not isinstance(doc, Mapping):
        raise ValueError(f"ExtenderArgs must be a JSON object, not {type(doc).__name__}")
    pod = ci(doc, "Pod")
    if pod is not None and not isinstance(pod, Mapping):
        raise ValueError("ExtenderArgs.Pod must be an object or null")
    names = ci(doc, "NodeNames")
    nodes = ci(doc, "Nodes")
    if nodes is not None:
        if not isinstance(nodes, Mapping):
            raise ValueError("ExtenderArgs.Nodes must be a NodeList object or null")
        items = ci(nodes, "items")
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ValueError("ExtenderArgs.Nodes.items must be a list")
        objs = tuple(items)
        node_names = tuple(node_name(n) for n in objs)
        return ExtenderArgs(pod, node_names, objs, nodes)
    if names is None:
        raise ValueError("ExtenderArgs has neither Nodes nor NodeNames")
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError("ExtenderArgs.NodeNames must be a list of non-empty strings")
    return ExtenderArgs(pod, tuple(names), None, None)


def host_priority_list(scores: Sequence[tuple[str, int]]) -> list[dict[str, Any]]:
    return [{"Host": h, "Score": int(s)} for h, s in scores]


def filter_result(args: ExtenderArgs, passed: Sequence[str], failed: Mapping[str, str],
                  error: str = "") -> dict[str, Any]:
    """ExtenderFilterResult in the mode the scheduler asked in (NodeNames or Nodes)."""
    out: dict[str, Any] = {"Nodes": None, "NodeNames": None, "FailedNodes": dict(failed),
                           "FailedAndUnresolvableNodes": {}, "Error": error}
    if args.nodes is None:
        out["NodeNames"] = list(passed)
    else:
        keep = set(passed)
        items = [n for n in args.nodes if node_name(n) in keep]
        nl = {k: v for k, v in (args.node_list or {}).items() if k.lower() != "items"}
        nl["items"] = items
        out["Nodes"] = nl
    return out


def error_filter_result(error: str) -> dict[str, Any]:
    """The answer to ExtenderArgs that cannot be read: Error set, nothing filtered. An ignorable
    extender's error is skipped by the scheduler; a non-ignorable one fails this pod's cycle
    (never a 500, which would look like the extender being down)."""
    return {"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
            "Error": error}


def pod_annotation(pod: Mapping[str, Any] | None, key: str) -> str | None:
    ann = ci(ci(pod, "metadata"), "annotations")
    v = ann.get(key) if isinstance(ann, Mapping) else None
    return v if isinstance(v, str) else None


def pod_priority(pod: Mapping[str, Any] | None) -> int | None:
    p = ci(ci(pod, "spec"), "priority")
    return p if isinstance(p, int) and not isinstance(p, bool) else None


def pod_label(pod: Mapping[str, Any] | None) -> str:
    md = ci(pod, "metadata")
    ns, name = ci(md, "namespace", ""), ci(md, "name", "")
    return f"{ns}/{name}" if isinstance(ns, str) and isinstance(name, str) else ""


def node_quantity(node: Mapping[str, Any], resource: str) -> str | None:
    """The Node's status.allocatable[resource] (else status.capacity[resource]) as text."""
    st = ci(node, "status")
    for part in ("allocatable", "capacity"):
        m = ci(st, part)
        if isinstance(m, Mapping) and resource in m:
            v = m[resource]
            return str(v) if isinstance(v, (str, int, float)) and not isinstance(v, bool) else None
    return None
