"""Pod and node metadata: from the Kubernetes API, or standalone without one.

``parse`` (pure: quantities, Pod and Node objects, the view), ``api`` (the endpoint and
checked answers), ``watch`` (the metadata sources the agent runs). Split like ``cgroups/``.
"""

from agent.kube.api import SA_DIR, ApiEndpoint, ApiError, in_cluster_endpoint
from agent.kube.parse import (ContainerResources, KubeView, NodeMeta, PodMeta, parse_cpu_cores,
                              parse_memory_bytes, parse_node, parse_pod, parse_quantity,
                              pod_from_cgroup, standalone_node)
from agent.kube.watch import PodWatcher, StandaloneMetadata, read_standalone_node
from agent.retry import backoff_delay

__all__ = [
    "SA_DIR", "ApiEndpoint", "ApiError", "in_cluster_endpoint", "ContainerResources", "KubeView",
    "NodeMeta", "PodMeta", "parse_cpu_cores", "parse_memory_bytes", "parse_node", "parse_pod",
    "parse_quantity", "pod_from_cgroup", "standalone_node", "PodWatcher", "StandaloneMetadata",
    "read_standalone_node", "backoff_delay",
]
