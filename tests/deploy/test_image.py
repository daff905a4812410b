"""The image builds with podman (scripts/image.sh, as `make image` does) and the container,
started with the DaemonSet's own args, capabilities, security context, mounts and config, loads
every probe and serves /metrics with real events; on a "node" without headers it runs on and
says why each probe is down. The host's firewall rules and IP forwarding are the
same afterwards. (~1 min with the base cached; the first run debootstraps the base, ~40 s more.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.probes import registry
from tests.deploy.common import ROOT, render
from tests.e2e.agent_proc import free_port, http_get

pytestmark = pytest.mark.bpf
if os.geteuid() != 0:
    pytest.skip("podman storage and BPF need root", allow_module_level=True)
if shutil.which("apt-get") is None:
    pytest.skip("the image is built with Debian's podman: no apt-get here", allow_module_level=True)

# the tag is shared by every checkout on a machine: TEST_IMAGE gives a run its own
IMAGE = os.environ.get("TEST_IMAGE", "localhost/ebpf-edge-agent:test")
ENV = {**os.environ, "CONTAINERS_CONF": str(ROOT / "deploy" / "containers.conf"), "IMAGE": IMAGE}


def host_network_state() -> dict[str, str]:
    state = {}
    for key in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
        state[key] = Path("/proc/sys", key).read_text().strip()
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            out = subprocess.run([tool], capture_output=True, text=True).stdout
            state[tool] = "\n".join(ln for ln in out.splitlines() if not ln.startswith("#"))
    for tool in ("nft",):
        if shutil.which(tool):
            state[tool] = subprocess.run([tool, "list", "ruleset"], capture_output=True,
                                         text=True).stdout
    return state


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True,
                          check=check, timeout=timeout)


def cgroup2_mount() -> str:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        f = line.split()
        if f[2] == "cgroup2":
            return f[1]
    pytest.skip("no cgroup v2 mount on this machine")


def run_args(ds: dict, config_dir: Path, port: int, host_paths: dict | None = None,
             hide: tuple[str, ...] = ()) -> list[str]:
    """podman run arguments equivalent to the DaemonSet's pod (network: host, loopback only).
    ``host_paths`` stands other directories in for host paths (a node that lacks things);
    ``hide``: container paths covered by an empty tmpfs (e.g. the host's kernel headers)."""
    host_paths = host_paths or {}
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    sc = c["securityContext"]
    assert not sc.get("privileged")
    args = ["--network=host", "--cap-drop=all"]
    args += [f"--cap-add={cap.lower()}" for cap in sc["capabilities"]["add"]]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if sc.get("seccompProfile", {}).get("type") == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        opts = ["ro"] if m.get("readOnly") else []
        if m.get("mountPropagation") == "HostToContainer":
            opts.append("rslave")
        opt = ":" + ",".join(opts) if opts else ""
        if "hostPath" in v:
            src = host_paths.get(v["hostPath"]["path"], v["hostPath"]["path"])
            args += ["-v", f"{src}:{m['mountPath']}{opt}"]
        elif "emptyDir" in v:
            args += ["--tmpfs", m["mountPath"]]
        elif "configMap" in v:
            args += ["-v", f"{config_dir}:{m['mountPath']}{opt}"]
    for path in hide:
        args += ["--mount", f"type=tmpfs,destination={path},ro=true"]
    # this machine is hybrid: cgroup v2 lives below the v1 tmpfs, not at /sys/fs/cgroup
    v2 = "/host" + cgroup2_mount()
    args += ["-e", "NODE_NAME=image-test", "-e", f"EBPF_EDGE_AGENT_LISTEN=127.0.0.1:{port}",
             "-e", "EBPF_EDGE_AGENT_SAMPLE_INTERVAL=2", "-e", f"EBPF_EDGE_AGENT_CGROUP_ROOT={v2}",
             "-e", f"HEALTHCHECK_URL=http://127.0.0.1:{port}/healthz"]
    return args + [IMAGE, *c.get("args", [])]


def make_tcp_and_drops(seconds: float = 3.0) -> None:
    """Loopback traffic the probes see: a bounded TCP transfer and connects to a closed port."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    cli = socket.create_connection(srv.getsockname())
    conn, _ = srv.accept()
    deadline = time.monotonic() + seconds
    chunk = b"x" * 65536
    while time.monotonic() < deadline:
        cli.sendall(chunk)
        conn.recv(1 << 20)
    for s in (cli, conn, srv):
        s.close()
    closed = free_port()
    for _ in range(3):
        try:
            socket.create_connection(("127.0.0.1", closed), timeout=1).close()
        except OSError:
            pass


def scrape(text: str, prefix: str) -> dict[str, float]:
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in text.splitlines()
            if ln.startswith(prefix)}


def test_image_builds_and_runs_with_the_daemonsets_grant(tmp_path):
    before = host_network_state()
    name = f"eea-image-test-{os.getpid()}"
    # a second network namespace with a process in it: the agent in the container must count
    # it (through /host/proc/<pid>/net/snmp) next to the host's
    netns = f"eeaimg{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", netns, "sleep", "600"])
    try:
        t0 = time.monotonic()
        b = subprocess.run([str(ROOT / "scripts" / "image.sh"), "build"], env=ENV,
                           capture_output=True, text=True, timeout=900)
        assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
        build_s = time.monotonic() - t0
        inspect = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
        # the program is the entrypoint, run its default argument: other commands work too
        assert inspect["Config"]["Entrypoint"] == ["/opt/ebpf-edge-agent/venv/bin/ebpf-edge-agent"]
        assert inspect["Config"]["Cmd"] == ["run"]
        from agent import __version__

        labels = inspect["Config"]["Labels"]
        assert labels["org.opencontainers.image.version"] == __version__
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        if head:
            assert labels["org.opencontainers.image.revision"].startswith(head), labels
        assert labels["org.opencontainers.image.source"] not in ("", None), labels
        ck = podman("run", "--rm", "--network=none", IMAGE, "check-kernel", "--json", check=False)
        assert ck.returncode in (0, 1) and json.loads(ck.stdout)["kernel"] == os.uname().release, (
            ck.stdout[-2000:] + ck.stderr[-2000:])
        # no host mounted at all: check-kernel names the image's generic tree and why
        assert "the image's generic tree /opt/ebpf-edge-agent/kernel-headers" in ck.stdout, ck.stdout[-3000:]
        assert "the host has none for" in ck.stdout, ck.stdout[-3000:]
        assert inspect.get("Healthcheck", {}).get("Test"), "HEALTHCHECK lost (image not docker format?)"
        # only the agent's own dependencies in the venv, and the distribution's bcc
        pkgs = podman("run", "--rm", "--network=none", "--entrypoint",
                      "/opt/ebpf-edge-agent/venv/bin/python", IMAGE, "-c",
                      "import bcc, os, importlib.metadata as m; print(os.path.realpath(bcc.__file__)); "
                      "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))").stdout
        assert "/usr/lib/python3/dist-packages/bcc/" in pkgs
        assert "pytest" not in pkgs and "'bcc'" not in pkgs

        objs = render()
        ds = next(o for o in objs if o["kind"] == "DaemonSet")
        cm = next(o for o in objs if o["kind"] == "ConfigMap" and "agent.yaml" in o["data"])
        (tmp_path / "agent.yaml").write_text(cm["data"]["agent.yaml"])
        port = free_port()
        t_start = time.monotonic()
        # without the host's kernel headers: its /lib/modules and /usr/src are hidden
        podman("run", "-d", "--name", name,
               *run_args(ds, tmp_path, port, hide=("/host/lib/modules", "/host/usr/src")))
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        ready = False
        while time.monotonic() < deadline and not ready:
            try:
                ready = http_get(base + "/readyz", 2)[0] == 200
            except OSError:
                time.sleep(0.5)
            state = podman("inspect", "-f", "{{.State.Running}}", name).stdout.strip()
            assert state == "true", podman("logs", name, check=False).stderr[-3000:]
        assert ready, podman("logs", name, check=False).stderr[-3000:]
        ready_s = time.monotonic() - t_start
        make_tcp_and_drops()
        time.sleep(5)  # two windows after the traffic
        code, text = http_get(base + "/metrics")
        logs = podman("logs", name, check=False)
        assert code == 200
        up = scrape(text, "ebpf_probe_up{")
        assert sorted(up.values()) == [1.0] * len(registry.names()), (up, logs.stderr[-3000:])
        # every probe compiled against the image's own probe header tree: no kernel's needed
        for n in registry.names():
            assert f"probe {n}: loaded and attached" in logs.stderr, logs.stderr[-3000:]
        assert logs.stderr.count("against probe-headers)") == len(registry.names()), logs.stderr[-3000:]
        assert scrape(text, "ebpf_tcp_rtt_seconds_count")["ebpf_tcp_rtt_seconds_count"] > 0
        assert scrape(text, "ebpf_runqlat_seconds_count")["ebpf_runqlat_seconds_count"] > 0
        drops = scrape(text, "ebpf_skb_drops_total{")
        assert sum(drops.values()) > 0, drops
        assert "ebpf_tcp_retrans_rate " in text
        nsc = scrape(text, "ebpf_network_namespaces")["ebpf_network_namespaces"]
        assert nsc >= 2, f"the container counted {nsc} network namespace(s)"
        # the host's /proc is the one the agent reads (host processes' SNMP counters)
        probe = podman("exec", name, "/opt/ebpf-edge-agent/venv/bin/python", "-c",
                       "print(open('/host/proc/1/net/snmp').read().count('Tcp:'))", check=False)
        assert probe.returncode == 0 and probe.stdout.strip() == "2", probe.stderr
        hc = podman("healthcheck", "run", name, check=False)
        assert hc.returncode == 0, hc.stdout + hc.stderr
        pid = podman("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()
        status = dict(ln.split(":", 1) for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
        # the agent in the container maps no bcc/LLVM: every probe compiled in a child
        mapped = Path(f"/proc/{pid}/maps").read_text()
        assert "libLLVM" not in mapped and "libbcc" not in mapped and "libclang" not in mapped
        rss, hwm = status["VmRSS"].strip(), status["VmHWM"].strip()
        t_stop = time.monotonic()
        podman("stop", "-t", "10", name)
        stop_s = time.monotonic() - t_stop

        # a node with nothing under its / (no headers, no /proc to read): the pod still starts,
        # keeps running, compiles against the image's tree and every probe comes up
        bare = tmp_path / "bare-node"
        bare.mkdir()
        port2 = free_port()
        podman("run", "-d", "--name", name + "-bare",
               *run_args(ds, tmp_path, port2, host_paths={"/": str(bare)}))
        body = ""
        n = len(registry.names())
        deadline = time.monotonic() + 120
        # every probe comes up from the image's own header tree ("down (not started yet)" first)
        while time.monotonic() < deadline and body.count(": up") < n:
            try:
                code, body = http_get(f"http://127.0.0.1:{port2}/readyz", 2)
            except OSError:
                pass
            time.sleep(0.5)
        bare_logs = podman("logs", name + "-bare", check=False).stderr[-3000:]
        assert body.count(": up") == n, body + bare_logs
        assert podman("inspect", "-f", "{{.State.Running}}", name + "-bare").stdout.strip() == "true"
        assert not any(bare.iterdir()), "the agent created something on the 'host'"
        size = inspect["Size"]
        print(f"\nimage {size / 1e6:.0f} MB, build {build_s:.0f} s, ready after {ready_s:.1f} s, "
              f"RSS {rss}, peak {hwm}, stop {stop_s:.1f} s")
        assert stop_s < 10
    finally:
        sleeper.kill()
        sleeper.wait()
        subprocess.run(["ip", "netns", "del", netns], check=False)
        podman("rm", "-f", name, check=False)
        podman("rm", "-f", name + "-bare", check=False)
        after = host_network_state()
        assert after == before, "podman changed the host's firewall or forwarding settings"
