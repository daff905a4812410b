"""Pods for the report: cgroup v2 readings (usage over a window) joined with pod metadata
(Kubernetes API, or standalone: pods named by their cgroup). Implements the sampler's
PodSource; never raises out of a cycle (the sampler guards it anyway)."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Callable, Sequence

from agent.cgroups.read import CgroupReader, read_cgroup2_root
from agent.cgroups.usage import pod_windows
from agent.config import Config, ConfigError
from agent.kube import (ApiEndpoint, KubeView, PodMeta, PodWatcher, StandaloneMetadata,
                        in_cluster_endpoint, pod_from_cgroup)
from agent.model import PodSample
from agent.procfs import netns_key, read_netns_bytes

log = logging.getLogger(__name__)



def make_metadata(config: Config):
    """The pod metadata source the config asks for; ConfigError when it cannot be had."""
    mode = config.kubernetes
    if mode == "off":
        return StandaloneMetadata(config.resolved_node_name())
    try:
        if config.kubernetes_api_url:
            endpoint = ApiEndpoint(base_url=config.kubernetes_api_url.rstrip("/"))
        else:
            endpoint = in_cluster_endpoint()
    except ValueError as e:
        if mode == "on":
            raise ConfigError("kubernetes", mode, f"a reachable API: {e}") from None
        log.info("no Kubernetes API (%s): standalone mode", e)
        return StandaloneMetadata(config.resolved_node_name())
    return PodWatcher(endpoint, config.resolved_node_name(), tenant_label=config.tenant_label or None)


def slo_ms(meta: PodMeta | None, annotation: str) -> float | None:
    if meta is None:
        return None
    raw = meta.annotations.get(annotation)
    if raw is None:
        return None
    try:
        v = float(raw)
    except ValueError:
        return None
    return v if v > 0 else None


def join(reading, windows, view: KubeView, annotation: str) -> list[PodSample]:
    """Pure: one PodSample per pod cgroup (and, standalone, per top-level cgroup)."""
    out = []
    items = [(uid, ps.pod, ps.pod.identity) for uid, ps in reading.pods.items()]
    items += [(path, s, None) for path, s in reading.others.items()]
    for key, sample, ident in items:
        meta = view.pods.get(key)
        if meta is None:
            meta_for_name = pod_from_cgroup(sample.path, ident.pod_uid if ident else None,
                                            ident.qos if ident else "")
        else:
            meta_for_name = meta
        w = windows.get(key)
        cpu_limit = w.cpu_limit_cores if w and w.cpu_limit_cores is not None else (
            meta.cpu_limit_cores if meta else None)
        mem_limit = w.memory_limit_bytes if w and w.memory_limit_bytes is not None else (
            meta.memory_limit_bytes if meta else None)
        cs = sample.cpu_stat
        out.append(PodSample(
            uid=key,
            namespace=meta_for_name.namespace,
            pod=meta_for_name.name,
            tenant=meta_for_name.tenant,
            cpu_used=w.cpu_cores if w else None,
            cpu_limit=cpu_limit,
            memory_used=w.memory_working_set_bytes if w else None,
            memory_limit=mem_limit,
            addresses=tuple(meta.pod_ips) if meta else (),
            host_network=bool(meta.host_network) if meta else False,
            rtt_slo_ms=slo_ms(meta, annotation),
            qos=meta_for_name.qos or (ident.qos if ident else ""),
            cpu_throttled_ratio=w.throttled_periods_ratio if w else None,
            cpu_pressure=w.cpu_some_stall if w else None,
            memory_pressure=w.memory_some_stall if w else None,
            cpu_seconds_total=cs.usage_usec / 1e6 if cs is not None else None,
            cpu_throttled_seconds_total=(cs.throttled_usec / 1e6
                                         if cs is not None and cs.throttled_usec is not None else None),
            cgroup_ids=tuple(sample.cgroup_ids),
        ))
    return out


class ClusterPods:
    """PodSource over a cgroup reader and a metadata source."""

    def __init__(self, config: Config, reader: CgroupReader | None, metadata,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.reader = reader
        self.metadata = metadata
        self.clock = clock
        self._prev = None
        self._pid: dict[str, int] = {}  # pod key -> a pid inside it (cached)
        self._net_prev: dict[str, tuple[int, int, int, float]] = {}  # key -> (netns, rx, tx, when)

    @classmethod
    def from_config(cls, config: Config) -> "ClusterPods":
        root = config.cgroup_root or read_cgroup2_root(
            mounts_path=str(config.proc_root / "self" / "mounts"))
        metadata = make_metadata(config)
        reader = None
        if root is None:
            log.warning("no cgroup v2 hierarchy found: per-pod CPU and memory unavailable "
                        "(set cgroup_root)")
        elif not os.path.exists(os.path.join(root, "cgroup.procs")):
            log.warning("cgroup_root %s is not a cgroup v2 hierarchy (missing on this node, or "
                        "not mounted into the container): per-pod CPU and memory unavailable "
                        "until it appears", root)
        else:
            standalone = isinstance(metadata, StandaloneMetadata)
            reader = CgroupReader(root, standalone_depth=config.standalone_cgroup_depth if standalone else 0)
            log.info("reading cgroups below %s (%s)", root,
                     "standalone: top-level cgroups are the pods" if standalone else "kubernetes")
        return cls(config, reader, metadata)

    def start(self) -> None:
        self.metadata.start()
        if self.reader is not None:
            self._prev = self.reader.read()

    def stop(self) -> None:
        self.metadata.stop(timeout=1.0)

    def pods(self) -> Sequence[PodSample]:
        if self.reader is None:
            return ()
        reading = self.reader.read()
        windows = pod_windows(self._prev, reading) if self._prev is not None else {}
        self._prev = reading
        pods = join(reading, windows, self.metadata.snapshot(), self.config.rtt_slo_annotation)
        paths = {uid: ps.pod.path for uid, ps in reading.pods.items()}
        paths.update({path: path for path in reading.others})
        out = [self._with_traffic(p, paths.get(p.uid)) for p in pods]
        seen = {p.uid for p in pods}  # forget pods that are gone: nothing grows with churn
        self._pid = {k: v for k, v in self._pid.items() if k in seen}
        self._net_prev = {k: v for k, v in self._net_prev.items() if k in seen}
        return out

    # -- per-pod traffic: bytes through the pod's own network namespace -----------------------
    def _find_pid(self, key: str, rel: str | None) -> int | None:
        pid = self._pid.get(key)
        proc = self.config.proc_root
        if pid is not None and (proc / str(pid)).exists():
            return pid
        self._pid.pop(key, None)
        if rel is None:
            return None
        base = os.path.join(self.reader.root, rel)
        for dirpath, _dirs, files in os.walk(base):
            if "cgroup.procs" not in files:
                continue
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    first = f.readline().strip()
            except OSError:
                continue
            if first.isdigit():
                self._pid[key] = int(first)
                return int(first)
        return None

    def _with_traffic(self, p: PodSample, rel: str | None) -> PodSample:
        if p.host_network:
            return p
        proc = self.config.proc_root
        pid = self._find_pid(p.uid, rel)
        ns = netns_key(proc, pid) if pid is not None else None
        if ns is None or ns == self._host_netns():
            self._net_prev.pop(p.uid, None)
            return p  # host network (or unknown): its traffic is the node's
        cur = read_netns_bytes(proc, pid)
        if cur is None:
            return p
        now = self.clock()
        prev = self._net_prev.get(p.uid)
        self._net_prev[p.uid] = (ns, cur[0], cur[1], now)
        p = dataclasses.replace(p, net_rx_bytes_total=cur[0], net_tx_bytes_total=cur[1])
        if prev is None or prev[0] != ns or cur[0] < prev[1] or cur[1] < prev[2] or now <= prev[3]:
            return p  # first sight or a new sandbox: the window starts now
        return dataclasses.replace(p, net_rx_bytes=cur[0] - prev[1], net_tx_bytes=cur[1] - prev[2],
                                   net_seconds=now - prev[3])

    def _host_netns(self) -> int | None:
        """The node's network namespace: PID 1's (in a DaemonSet with hostPID that is the
        host's init); where PID 1 is not readable, the agent's own (standalone on the host)."""
        ns = netns_key(self.config.proc_root, 1)
        return ns if ns is not None else netns_key(self.config.proc_root, "self")

    def allocatable(self) -> tuple[float | None, int | None] | None:
        node = self.metadata.snapshot().node
        if node is None:
            return None
        return node.cpu_allocatable_cores, node.memory_allocatable_bytes

    def read_totals(self) -> dict[str, int]:
        return dict(self.reader.totals) if self.reader is not None else {}

    def metrics(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        c = CounterMetricFamily("ebpf_cgroup_read_problems",
                                "cgroup files skipped while reading (vanished, garbled, errors)",
                                labels=["kind"])
        totals = self.read_totals()
        for kind in ("vanished", "garbled", "errors"):
            c.add_metric([kind], totals.get(kind, 0))
        yield c
        view = self.metadata.snapshot()
        g = GaugeMetricFamily("ebpf_pod_metadata_synced",
                              "1 once pod metadata was listed (always 1 standalone)", labels=["source"])
        g.add_metric([view.source], 1 if view.synced else 0)
        yield g
        e = CounterMetricFamily("ebpf_kube_api_errors",
                                "Kubernetes API errors (the last good view is kept)")
        e.add_metric([], view.errors_total)
        yield e
