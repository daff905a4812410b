"""Optional node capacity advertisement (off by default; the caller decides): the link speed of
the interface carrying the default route, published as an extended resource on the Node status
(``example.com/SLO`` in bit/s by default), as the DepCon2 ``slo_setting.sh`` did by hand with
ethtool and ``kubectl proxy``.

Pure: :func:`parse_link_speed`, :func:`capacity_patch`. IO: :func:`read_default_route_interface`
(pyroute2), :func:`read_link_speed` (``/sys/class/net/<if>/speed``), :func:`publish_capacity`
(JSON patch to ``/api/v1/nodes/<node>/status``), :func:`advertise_link_speed` (all of it).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import requests

from agent.kube import ApiEndpoint

DEFAULT_RESOURCE = "example.com/SLO"


class CapacityError(Exception):
    """Advertising failed; the message says why and what to do."""


def parse_link_speed(text: str) -> Optional[int]:
    """``/sys/class/net/<if>/speed`` (Mbit/s) -> bit/s; None when the driver reports no speed
    (``-1``, as virtio and many virtual links do, or 0)."""
    s = text.strip()
    body = s[1:] if s.startswith("-") else s
    if not body.isascii() or not body.isdigit():
        raise ValueError(f"link speed: {text[:40]!r} is not an integer in Mbit/s")
    v = int(s)
    if v <= 0 or v == 0xFFFFFFFF:  # SPEED_UNKNOWN is -1 (or ~0 as unsigned on old kernels)
        return None
    return v * 1_000_000


def read_link_speed(ifname: str, sys_class_net: str = "/sys/class/net") -> Optional[int]:
    """The interface's speed in bit/s; None when unknown (-1, or EINVAL when the link is down or
    virtual). Raises CapacityError when the interface does not exist."""
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise CapacityError(f"capacity: {ifname!r} is not an interface name")
    path = os.path.join(sys_class_net, ifname, "speed")
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise CapacityError(f"capacity: no interface {ifname!r} ({path} is missing)") from None
    except OSError:  # EINVAL: no speed for this link type or state
        return None
    return parse_link_speed(text)


def parse_proc_route_default(text: str) -> Optional[str]:
    """The interface of the lowest-metric IPv4 default route in a /proc/<pid>/net/route text."""
    best = None
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest, flags, metric, mask = int(f[1], 16), int(f[3], 16), int(f[6]), int(f[7], 16)
        except ValueError:
            raise ValueError(f"net/route: bad line {line!r}") from None
        if dest == 0 and mask == 0 and flags & 0x1:  # RTF_UP
            if best is None or metric < best[0]:
                best = (metric, f[0])
    return best[1] if best else None


def read_node_default_route_interface(proc_root: str = "/proc") -> Optional[str]:
    """The node's default-route interface. In a pod (own network namespace) the node's routes
    are those of PID 1 seen through the host's /proc mounted at ``proc_root``; where that is not
    readable, the agent's own namespace via netlink."""
    try:
        with open(os.path.join(proc_root, "1", "net", "route")) as f:
            name = parse_proc_route_default(f.read())
        if name is not None:
            return name
    except (OSError, ValueError):
        pass
    return read_default_route_interface()


def read_default_route_interface(ipr: Any = None) -> Optional[str]:
    """Name of the interface of the default route (lowest metric; IPv4 first, then IPv6), via
    netlink (pyroute2). None when there is no default route."""
    from pyroute2 import IPRoute

    own = ipr is None
    ipr = ipr or IPRoute()
    try:
        for family in (2, 10):  # AF_INET, AF_INET6
            best = None
            for r in ipr.get_routes(family=family, table=254):
                if r.get("dst_len") != 0:
                    continue
                oif = r.get_attr("RTA_OIF")
                if oif is None:
                    mp = r.get_attr("RTA_MULTIPATH") or []
                    oif = mp[0].get("oif") if mp else None
                if oif is None:
                    continue
                metric = r.get_attr("RTA_PRIORITY") or 0
                if best is None or metric < best[0]:
                    best = (metric, oif)
            if best is not None:
                links = ipr.get_links(best[1])
                if links:
                    return links[0].get_attr("IFLA_IFNAME")
        return None
    finally:
        if own:
            ipr.close()


def capacity_patch(resource_name: str, value: int) -> List[Dict[str, Any]]:
    """The JSON patch that sets ``status.capacity[resource_name]`` (``/`` escaped as ``~1``)."""
    if not resource_name or "/" not in resource_name:
        raise ValueError(f"capacity: {resource_name!r} is not an extended resource name like 'example.com/SLO'")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"capacity: {value!r} is not a non-negative integer")
    key = resource_name.replace("~", "~0").replace("/", "~1")
    return [{"op": "add", "path": f"/status/capacity/{key}", "value": str(value)}]


def publish_capacity(
    endpoint: ApiEndpoint,
    node_name: str,
    value: int,
    resource_name: str = DEFAULT_RESOURCE,
    timeout: float = 10.0,
    session: Optional[requests.Session] = None,
) -> None:
    """PATCH the Node status. Raises CapacityError with a clear message (403 names the RBAC rule
    the service account lacks)."""
    body = capacity_patch(resource_name, value)
    url = f"{endpoint.base_url.rstrip('/')}/api/v1/nodes/{node_name}/status"
    headers = dict(endpoint.headers(), **{"Content-Type": "application/json-patch+json"})
    sess = session or requests.Session()
    try:
        resp = sess.patch(url, json=body, headers=headers, verify=endpoint.verify, timeout=(timeout, timeout))
    except requests.RequestException as e:
        raise CapacityError(f"capacity: PATCH {url} failed: {type(e).__name__}: {e}") from None
    finally:
        if session is None:
            sess.close()
    if resp.status_code == 200:
        return
    if resp.status_code == 403:
        raise CapacityError(
            f"capacity: the API server refused to patch node {node_name!r} status (403 Forbidden). "
            "Grant the agent's service account 'patch' on the 'nodes/status' resource "
            "(ClusterRole rule: apiGroups [''], resources ['nodes/status'], verbs ['patch']), "
            "or leave capacity advertisement off."
        )
    raise CapacityError(f"capacity: PATCH {url}: HTTP {resp.status_code} {resp.text[:200]}".rstrip())


def advertise_link_speed(
    endpoint: ApiEndpoint,
    node_name: str,
    resource_name: str = DEFAULT_RESOURCE,
    interface: Optional[str] = None,
    sys_class_net: str = "/sys/class/net",
    timeout: float = 10.0,
    session: Optional[requests.Session] = None,
    proc_root: str = "/proc",
) -> int:
    """Read the speed of ``interface`` (default: the default route's) and publish it. Returns the
    value published in bit/s; raises CapacityError when there is nothing sensible to publish."""
    ifname = interface or read_node_default_route_interface(proc_root)
    if ifname is None:
        raise CapacityError("capacity: no default route, so no interface to advertise (set one explicitly)")
    speed = read_link_speed(ifname, sys_class_net)
    if speed is None:
        raise CapacityError(f"capacity: interface {ifname!r} reports no link speed (virtual or down); nothing published")
    publish_capacity(endpoint, node_name, speed, resource_name, timeout, session)
    return speed
