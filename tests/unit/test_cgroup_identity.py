"""Pure path -> pod/container identity for both kubelet drivers and three runtimes."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cgroups.identity import app_containers, identify_cgroup, normalize_container_id
from agent.cgroups.model import CgroupIdentity, CgroupSample

UID = "0a1b2c3d-1111-4222-8333-444455556666"
SD = UID.replace("-", "_")
CID = "ab" * 32


@pytest.mark.parametrize(
    "path, expected",
    [
        (f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice",
         CgroupIdentity(UID, "burstable", "systemd")),
        (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/cri-containerd-{CID}.scope",
         CgroupIdentity(UID, "burstable", "systemd", CID, "containerd")),
        (f"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{SD}.slice/crio-{CID}.scope",
         CgroupIdentity(UID, "besteffort", "systemd", CID, "cri-o")),
        (f"kubepods.slice/kubepods-pod{SD}.slice/docker-{CID}.scope",
         CgroupIdentity(UID, "guaranteed", "systemd", CID, "docker")),
        (f"kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{SD}.slice",
         CgroupIdentity(UID, "besteffort", "systemd")),
        (f"kubepods/burstable/pod{UID}/{CID}", CgroupIdentity(UID, "burstable", "cgroupfs", CID, None)),
        (f"kubepods/pod{UID}/{CID}", CgroupIdentity(UID, "guaranteed", "cgroupfs", CID, None)),
        (f"kubepods/besteffort/pod{UID}/crio-{CID}", CgroupIdentity(UID, "besteffort", "cgroupfs", CID, "cri-o")),
        (f"kubepods/besteffort/pod{UID}", CgroupIdentity(UID, "besteffort", "cgroupfs")),
        # nested below a container: still that container
        (f"kubepods.slice/kubepods-pod{SD}.slice/crio-{CID}.scope/container",
         CgroupIdentity(UID, "guaranteed", "systemd", CID, "cri-o")),
        # static (mirror) pods have a 32-hex uid
        ("kubepods/burstable/pod" + "f" * 32, CgroupIdentity("f" * 32, "burstable", "cgroupfs")),
    ],
)
def test_identity(path, expected):
    assert identify_cgroup(path) == expected


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/",
        "system.slice/containerd.service",
        "kubepods.slice",
        "kubepods.slice/kubepods-burstable.slice",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/crio-conmon-{CID}.scope",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/something-else",
        f"user.slice/pod{UID}",  # "pod<uid>" outside kubepods is not a pod
        f"kubepods/weird/pod{UID}",
        # QoS in the pod slice must match its parent slice
        f"kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod{SD}.slice",
        f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{SD}.slice/cri-containerd-xyz.scope",
    ],
)
def test_not_a_pod_or_container(path):
    assert identify_cgroup(path) is None


def test_app_containers_drops_the_sandbox():
    def c(cid):
        return CgroupSample(f"p/{cid}", CgroupIdentity(UID, "burstable", "systemd", cid, "containerd"), 0.0)

    conts = [c("01" * 32), c("02" * 32), c("03" * 32)]
    apps = app_containers(conts, ["containerd://" + "02" * 32, "03" * 32])
    assert [a.identity.container_id for a in apps] == ["02" * 32, "03" * 32]
    assert app_containers(conts, None) == conts  # no API: cannot tell
    assert normalize_container_id("cri-o://ABC") == "abc"


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(
    ["kubepods", "kubepods.slice", "kubepods-burstable.slice", f"kubepods-burstable-pod{SD}.slice",
     f"pod{UID}", "burstable", f"cri-containerd-{CID}.scope", CID, "crio-conmon-" + CID, "x", "", "-", ".slice"]
) | st.text(max_size=30), max_size=6).map("/".join))
def test_identity_never_raises(path):
    ident = identify_cgroup(path)
    assert ident is None or ident.qos in ("guaranteed", "burstable", "besteffort")
