"""Pure parts of the metadata code: quantities, Pod and Node objects, the in-cluster endpoint,
backoff, standalone naming."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.kube import (
    backoff_delay,
    in_cluster_endpoint,
    parse_cpu_cores,
    parse_memory_bytes,
    parse_node,
    parse_pod,
    parse_quantity,
    pod_from_cgroup,
    standalone_node,
)


@pytest.mark.parametrize(
    "text, value",
    [("3920m", Decimal("3.92")), ("4", Decimal(4)), ("0.5", Decimal("0.5")), ("16Gi", Decimal(16 << 30)),
     ("16384Ki", Decimal(16 << 20)), ("100M", Decimal(10**8)), ("1e3", Decimal(1000)), ("1E-3", Decimal("0.001")),
     ("250u", Decimal("0.00025")), ("1.5Ti", Decimal(int(1.5 * (1 << 40)))), ("+2k", Decimal(2000)), ("500n", Decimal("5e-7"))],
)
def test_quantities(text, value):
    assert parse_quantity(text) == value


def test_cpu_and_memory_quantities():
    assert parse_cpu_cores("3920m") == pytest.approx(3.92)
    assert parse_memory_bytes("16Gi") == 17179869184
    assert parse_memory_bytes("16384Ki") == 16777216
    assert parse_memory_bytes("1500m") == 2  # fractions of a byte round up
    for bad in ("", "m", "Gi", "1.2.3", "12x", "1Gb", "--1", "1e", "١٢", "1e99999"):
        with pytest.raises(ValueError):
            parse_quantity(bad)
    with pytest.raises(ValueError, match="negative"):
        parse_cpu_cores("-1")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20) | st.from_regex(r"[+-]?[0-9.]{0,6}(e|E|Ki|Mi|m|k|M|G)?[+-]?[0-9]{0,4}", fullmatch=True))
def test_quantity_raises_only_value_error(text):
    try:
        parse_quantity(text)
    except ValueError:
        pass


UID = "0a1b2c3d-1111-4222-8333-444455556666"


def pod_obj(**over):
    obj = {
        "metadata": {"uid": UID, "namespace": "team-a", "name": "web-1", "resourceVersion": "7",
                     "labels": {"app": "web", "tenant": "acme"}, "annotations": {"a": "b"}},
        "spec": {"nodeName": "node1", "containers": [
            {"name": "app", "resources": {"limits": {"cpu": "1500m", "memory": "3Gi"}, "requests": {"cpu": "500m"}}},
            {"name": "side", "resources": {"limits": {"cpu": "200m", "memory": "512Mi"}}},
        ]},
        "status": {"phase": "Running", "qosClass": "Burstable", "podIP": "10.1.0.5",
                   "podIPs": [{"ip": "10.1.0.5"}, {"ip": "fd00::5"}],
                   "containerStatuses": [{"name": "app", "containerID": "containerd://" + "ab" * 32},
                                         {"name": "side"}]},
    }
    for k, v in over.items():
        obj[k] = v
    return obj


def test_parse_pod():
    p = parse_pod(pod_obj())
    assert (p.uid, p.namespace, p.name, p.tenant) == (UID, "team-a", "web-1", "team-a")
    assert p.labels["app"] == "web" and p.annotations == {"a": "b"}
    assert p.pod_ips == ("10.1.0.5", "fd00::5") and not p.host_network
    assert p.qos == "burstable" and p.phase == "Running" and p.node_name == "node1"
    assert p.cpu_limit_cores == pytest.approx(1.7) and p.memory_limit_bytes == (3 << 30) + (512 << 20)
    assert p.containers[0].cpu_request_cores == 0.5
    assert p.container_ids == ("ab" * 32,)
    assert parse_pod(pod_obj(), tenant_label="tenant").tenant == "acme"
    assert parse_pod(pod_obj(), tenant_label="missing").tenant == "team-a"


def test_parse_pod_qos_fallback_host_network_and_unlimited():
    obj = pod_obj(spec={"hostNetwork": True, "containers": [{"name": "c"}]}, status={"podIP": "192.0.2.9"})
    p = parse_pod(obj)
    assert p.host_network and p.qos == "besteffort" and p.pod_ips == ("192.0.2.9",)
    assert p.cpu_limit_cores is None and p.memory_limit_bytes is None
    g = parse_pod(pod_obj(spec={"containers": [{"resources": {"limits": {"cpu": "1", "memory": "1Gi"}}}]}, status={}))
    assert g.qos == "guaranteed"


@pytest.mark.parametrize(
    "obj, quoted",
    [
        ([], "is not an object"),
        ({"metadata": {"namespace": "a", "name": "b"}}, "no uid"),
        ({"metadata": {"uid": "u", "namespace": "a", "name": "b", "labels": {"x": 1}}}, "labels"),
        ({"metadata": {"uid": "u", "namespace": "a", "name": "b"},
          "spec": {"containers": [{"resources": {"limits": {"cpu": "lots"}}}]}}, "'lots'"),
    ],
)
def test_parse_pod_bad(obj, quoted):
    with pytest.raises(ValueError, match=quoted):
        parse_pod(obj)


def test_parse_node():
    n = parse_node({"metadata": {"name": "node1", "labels": {"zone": "a"}},
                    "status": {"allocatable": {"cpu": "3920m", "memory": "16384Ki", "pods": "110"},
                               "capacity": {"cpu": "4", "memory": "16Gi"}}})
    assert n.cpu_allocatable_cores == pytest.approx(3.92) and n.memory_allocatable_bytes == 16 << 20
    assert n.cpu_capacity_cores == 4.0 and n.memory_capacity_bytes == 16 << 30 and n.labels == {"zone": "a"}
    with pytest.raises(ValueError, match="'many'"):
        parse_node({"metadata": {"name": "n"}, "status": {"allocatable": {"cpu": "many"}}})


def test_in_cluster_endpoint(tmp_path):
    (tmp_path / "token").write_text("tok-1\n")
    (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    ep = in_cluster_endpoint(str(tmp_path), environ={"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"})
    assert ep.base_url == "https://10.96.0.1:443" and ep.verify == str(tmp_path / "ca.crt")
    assert ep.headers()["Authorization"] == "Bearer tok-1"
    (tmp_path / "token").write_text("tok-2\n")  # rotated: re-read on the next connection
    assert ep.headers()["Authorization"] == "Bearer tok-2"
    assert in_cluster_endpoint(str(tmp_path), environ={"KUBERNETES_SERVICE_HOST": "fd00::1"}).base_url == "https://[fd00::1]:443"
    assert in_cluster_endpoint(str(tmp_path), host="h", port="6443", environ={}).base_url == "https://h:6443"
    with pytest.raises(ValueError, match="KUBERNETES_SERVICE_HOST"):
        in_cluster_endpoint(str(tmp_path), environ={})
    with pytest.raises(ValueError, match="token"):
        in_cluster_endpoint(str(tmp_path / "nope"), environ={"KUBERNETES_SERVICE_HOST": "h"})


def test_backoff_has_jitter_and_a_cap():
    assert backoff_delay(0, 1.0, 60.0, lambda: 0.0) == 0.5
    assert backoff_delay(0, 1.0, 60.0, lambda: 1.0) == 1.0
    assert backoff_delay(3, 1.0, 60.0, lambda: 0.5) == 6.0
    assert backoff_delay(100, 1.0, 60.0, lambda: 1.0) == 60.0


def test_standalone_naming():
    n = standalone_node("vm", 2, 1 << 30)
    assert n.cpu_allocatable_cores == 2.0 and n.memory_allocatable_bytes == 1 << 30
    assert pod_from_cgroup("x/y", UID, "burstable").name == f"pod{UID}"
    other = pod_from_cgroup("system.slice/foo.service")
    assert other.uid == other.name == "system.slice/foo.service" and other.namespace == ""


def test_capacity_pure_parts():
    from agent.capacity import capacity_patch, parse_link_speed, read_default_route_interface

    assert parse_link_speed("10000\n") == 10_000_000_000
    assert parse_link_speed("-1\n") is None and parse_link_speed("0") is None
    with pytest.raises(ValueError, match="'fast'"):
        parse_link_speed("fast")
    assert capacity_patch("example.com/SLO", 5)[0]["path"] == "/status/capacity/example.com~1SLO"
    with pytest.raises(ValueError):
        capacity_patch("SLO", 5)
    with pytest.raises(ValueError):
        capacity_patch("example.com/SLO", -5)

    class Msg(dict):
        def __init__(self, attrs, **kw):
            super().__init__(kw)
            self.attrs = attrs

        def get_attr(self, name):
            return self.attrs.get(name)

    class FakeIPR:
        def get_routes(self, family, table):
            if family != 2:
                return []
            return [Msg({"RTA_OIF": 3, "RTA_PRIORITY": 100}, dst_len=0), Msg({"RTA_OIF": 2}, dst_len=0),
                    Msg({"RTA_OIF": 4}, dst_len=24)]

        def get_links(self, index):
            return [Msg({"IFLA_IFNAME": {2: "eth0", 3: "wlan0"}[index]})]

    assert read_default_route_interface(FakeIPR()) == "eth0"  # lowest metric wins


def test_node_default_route_from_proc_route_text():
    from agent.capacity import parse_proc_route_default

    text = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "eth1\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n"
            "eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n"
            "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n")
    assert parse_proc_route_default(text) == "eth0"  # lowest metric
    assert parse_proc_route_default(text.splitlines()[0] + "\n") is None
    import pytest

    with pytest.raises(ValueError, match="net/route"):
        parse_proc_route_default("h\neth0 zz 0 0003 0 0 0 00000000\n")
