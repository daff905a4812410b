"""Run only by tests/e2e/test_interruption.py (the name keeps pytest from collecting it): holds
what a real-kernel test holds -- a network lab with a traffic process, a cgroup with a process
in it, a pod-shaped cgroup tree with a process in it, a running agent -- prints what it made, and
waits to be interrupted."""

import json
import os
import time

import pytest

from agent.cgroups import read_cgroup2_root
from tests.bpf.netlab import NetLab
from tests.e2e.agent_proc import Agent
from tests.e2e.podcgroup import PodCgroupLab
from tests.e2e.test_agent_pods import Cgroups


@pytest.fixture
def lab():  # torn down by fixture teardown, as tests/bpf/conftest.py's is
    with NetLab() as lab:
        yield lab


def test_hold_everything_until_interrupted(lab):
    sink = lab.spawn(lab.b, "sink", lab.b.ip4, "5201", "120")
    cg = Cgroups()
    try:
        path = cg.make(f"eea-interrupt-{os.getpid()}")
        burst = cg.burst_in(path)
        # the live pod-cgroup test's tree and hog (tests/e2e/test_pod_cgroup_live.py)
        with PodCgroupLab(read_cgroup2_root(), controllers=False) as pod, \
                Agent("--kubernetes", "off") as agent:
            hog = pod.spawn_hog(1 << 20)
            print("HOLDING " + json.dumps({
                "netns": [lab.a.ns, lab.b.ns], "cgroup": str(path), "pod_cgroup": str(pod.top),
                "pids": [sink.pid, burst.pid, agent.proc.pid, hog.pid]}), flush=True)
            time.sleep(120)
    finally:
        cg.close()
