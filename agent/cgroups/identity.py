"""Pure: a cgroup path -> which Kubernetes pod / container it is, for both kubelet cgroup
drivers and the containerd, CRI-O and Docker naming. No IO.

systemd driver (slices nest by name; ``-`` in the pod uid is escaped as ``_``)::

    kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_>.slice/cri-containerd-<id>.scope
    kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod<uid_>.slice/crio-<id>.scope
    kubepods.slice/kubepods-pod<uid_>.slice/docker-<id>.scope           (guaranteed: no QoS slice)
    kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-pod<uid_>.slice/...   (--cgroup-root)

cgroupfs driver::

    kubepods/burstable/pod<uid>/<id>
    kubepods/pod<uid>/<id>                                               (guaranteed)
    kubepods/besteffort/pod<uid>/crio-<id>                               (CRI-O names with a prefix)

Not containers: CRI-O's ``crio-conmon-<id>.scope`` (the container monitor, runtime overhead)
gives None. The sandbox ("pause") container looks like any other container in its path under
containerd and Docker, so it cannot be told from the path: :func:`app_containers` drops it given
the container ids the Kubernetes API lists for the pod. Where those are unknown (standalone),
keep the pod-level reading, which includes the sandbox exactly as the kubelet's pod figure does.
"""

from __future__ import annotations

import re
from typing import Collection, Iterable, List, Optional, Sequence

from agent.cgroups.model import CgroupIdentity, CgroupSample

_HEX_ID = r"[0-9a-f]{12,64}"

# systemd: optional prefix of parent slices ("kubelet-"), optional QoS, pod<uid with _>
_SYSTEMD_POD = re.compile(r"^(?:[A-Za-z0-9_.]+-)*kubepods(?:-(burstable|besteffort))?-pod([0-9a-fA-F_]{8,64})\.slice$")
_SYSTEMD_KUBEPODS = re.compile(r"^(?:[A-Za-z0-9_.]+-)*kubepods(?:-(burstable|besteffort))?\.slice$")
_SYSTEMD_CONTAINER = re.compile(r"^(cri-containerd|crio|docker)-(" + _HEX_ID + r")\.scope$")
_CONMON = re.compile(r"^crio-conmon-" + _HEX_ID + r"(?:\.scope)?$")

_CGROUPFS_POD = re.compile(r"^pod([0-9a-fA-F-]{8,64})$")
_CGROUPFS_CONTAINER = re.compile(r"^(?:(crio|docker|cri-containerd)-)?(" + _HEX_ID + r")$")

_RUNTIME = {"cri-containerd": "containerd", "crio": "cri-o", "docker": "docker", None: None}


def _container(component: str, driver: str) -> Optional[tuple]:
    """(container_id, runtime) for a container cgroup name, else None."""
    if _CONMON.match(component):
        return None
    m = (_SYSTEMD_CONTAINER if driver == "systemd" else _CGROUPFS_CONTAINER).match(component)
    if m is None and driver == "systemd":
        # a systemd-driver node may still carry cgroupfs-style names for some runtimes
        m = _CGROUPFS_CONTAINER.match(component)
    if m is None:
        return None
    return m.group(2), _RUNTIME[m.group(1)]


def _pod_at(parts: Sequence[str], i: int) -> Optional[tuple]:
    """(uid, qos, driver) when ``parts[i]`` is a pod cgroup under a kubepods hierarchy."""
    c = parts[i]
    m = _SYSTEMD_POD.match(c)
    if m is not None:
        if i == 0 or not _SYSTEMD_KUBEPODS.match(parts[i - 1]):
            return None
        parent = _SYSTEMD_KUBEPODS.match(parts[i - 1])
        if parent.group(1) != m.group(1):  # the pod's QoS slice must be its parent
            return None
        return m.group(2).replace("_", "-").lower(), m.group(1) or "guaranteed", "systemd"
    m = _CGROUPFS_POD.match(c)
    if m is not None:
        uid = m.group(1).lower()
        if i >= 1 and parts[i - 1] == "kubepods":
            return uid, "guaranteed", "cgroupfs"
        if i >= 2 and parts[i - 1] in ("burstable", "besteffort") and parts[i - 2] == "kubepods":
            return uid, parts[i - 1], "cgroupfs"
    return None


def identify_cgroup(path: str) -> Optional[CgroupIdentity]:
    """The pod (and container) a cgroup path belongs to, or None.

    ``path`` is relative to the cgroup root or absolute as in ``/proc/<pid>/cgroup``
    (``0::/kubepods.slice/...`` minus the ``0::``). Cgroups nested below a container's cgroup
    belong to that container. Never raises for any string.
    """
    if not isinstance(path, str):
        return None
    parts = [p for p in path.split("/") if p]
    for i in range(len(parts)):
        pod = _pod_at(parts, i)
        if pod is None:
            continue
        uid, qos, driver = pod
        if i + 1 == len(parts):
            return CgroupIdentity(pod_uid=uid, qos=qos, driver=driver)
        cont = _container(parts[i + 1], driver)
        if cont is None:
            return None
        cid, runtime = cont
        return CgroupIdentity(pod_uid=uid, qos=qos, driver=driver, container_id=cid, runtime=runtime)
    return None


def is_kubepods_dir(name: str) -> bool:
    """A directory that holds pods or QoS classes: ``kubepods``, ``kubepods.slice``,
    ``kubelet-kubepods.slice``, ``kubepods-burstable.slice``, ``burstable`` under ``kubepods``."""
    return name == "kubepods" or _SYSTEMD_KUBEPODS.match(name) is not None


def normalize_container_id(container_id: str) -> str:
    """``containerd://<id>`` / ``cri-o://<id>`` / ``docker://<id>`` (as in the API's
    ``containerStatuses``) -> ``<id>``."""
    return container_id.split("://", 1)[-1].lower()


def app_containers(
    containers: Iterable[CgroupSample], known_ids: Optional[Collection[str]]
) -> List[CgroupSample]:
    """Container readings without the sandbox (pause) container.

    ``known_ids`` are the ids the Kubernetes API lists in the pod's (init/ephemeral) container
    statuses, with or without the ``runtime://`` prefix. A container cgroup whose id is not among
    them is the sandbox (or a container the API has not reported yet) and is left out. With
    ``known_ids`` None (no API) nothing can be told apart and every container is kept.
    """
    items = list(containers)
    if known_ids is None:
        return items
    known = {normalize_container_id(k) for k in known_ids}
    return [c for c in items if c.identity is not None and c.identity.container_id in known]
