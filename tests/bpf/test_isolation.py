"""One probe failing never stops the others (bounded maps: tests/bpf/test_addr_rows.py)."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from agent.model import ProbeStateKind
from agent.probes import registry
from agent.probes.registry import probe_class
from agent.probes.tcp_retrans import TcpRetransProbe
from agent.sampler import ProbeSet
from agent import loads

pytestmark = pytest.mark.bpf

VENV_BIN = Path(sys.executable).parent


class BrokenRetransProbe(TcpRetransProbe):
    """Compiles against a missing define: a real BCC compile error."""

    def defines(self):
        d = super().defines()
        del d["RETRANS_MAX_ENTRIES"]
        return d


def test_missing_tracepoint_and_compile_error_leave_the_others_counting(config, kernel):
    formats = dict(kernel.formats)
    formats["skb:kfree_skb"] = None  # simulate a kernel without the tracepoint
    k = dataclasses.replace(kernel, formats=formats)
    probes = [probe_class("tcp_rtt")(config, k), BrokenRetransProbe(config, k),
              probe_class("skb_drop")(config, k), probe_class("runqlat")(config, k)]
    ps = ProbeSet(probes)
    try:
        states = ps.start_all()
        assert states["skb_drop"].state is ProbeStateKind.UNSUPPORTED
        assert "skb:kfree_skb" in states["skb_drop"].reason
        assert states["tcp_retrans"].state is ProbeStateKind.DOWN
        assert "RETRANS_MAX_ENTRIES" in states["tcp_retrans"].reason
        assert states["tcp_rtt"].state is ProbeStateKind.UP
        assert states["runqlat"].state is ProbeStateKind.UP
        ps.read_windows()
        loads.tcp_transfer(nbytes=4 << 20, seconds=1)
        loads.busy_processes(0.3)
        win = ps.read_windows()
    finally:
        ps.close_all()
    assert set(win) == {"tcp_rtt", "runqlat"}
    assert win["tcp_rtt"].events > 0 and win["runqlat"].events > 0


def test_smoke_test_command_reports_all_probes_up_with_events():
    out = subprocess.run([str(VENV_BIN / "ebpf-edge-agent"), "smoke-test", "--json"],
                         capture_output=True, text=True, timeout=120)
    doc = json.loads(out.stdout)
    assert out.returncode == 0, (out.stdout, out.stderr[-2000:])
    assert doc["passed"] is True
    assert set(doc["probes"]) == set(registry.names())
    for name, p in doc["probes"].items():
        assert p["state"] == "up" and p["events"] > 0, (name, p)
    assert doc["probes"]["skb_drop"]["top_reasons"].get("NO_SOCKET", 0) >= 1
    assert doc["probes"]["tcp_rtt"]["p50"] > 0


def test_check_kernel_command():
    out = subprocess.run([str(VENV_BIN / "ebpf-edge-agent"), "check-kernel"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    for needle in ("tracefs", "btf", "kernel headers", "bpf permission", "cgroup v2",
                   "tracepoint tcp:tcp_probe", "probe runqlat"):
        assert needle in out.stdout


def _tracefs_without(tmp_path, missing: str):
    """A copy of the running kernel's tracepoint format files, one tracepoint left out: what a
    kernel without it looks like to the agent."""
    import shutil as sh
    from pathlib import Path

    src = next(p for p in (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
               if (p / "events").is_dir())
    root = tmp_path / "tracing"
    for cat in ("sched", "skb", "tcp", "sock"):
        for fmt in (src / "events" / cat).glob("*/format"):
            if f"{cat}:{fmt.parent.name}" == missing:
                continue
            dst = root / "events" / cat / fmt.parent.name
            dst.mkdir(parents=True)
            sh.copyfile(fmt, dst / "format")
            if (fmt.parent / "id").exists():
                sh.copyfile(fmt.parent / "id", dst / "id")
    return root


@pytest.mark.parametrize("require,want_rc", [("any", 0), ("all", 1)])
def test_check_kernel_require_all_fails_unless_every_probe_can_run(tmp_path, require, want_rc):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("EBPF_EDGE_AGENT_")}
    env["EBPF_EDGE_AGENT_TRACEFS_ROOTS"] = str(_tracefs_without(tmp_path, "sched:sched_switch"))
    out = subprocess.run([str(VENV_BIN / "ebpf-edge-agent"), "check-kernel", "--json",
                          "--require", require], env=env, capture_output=True, text=True, timeout=60)
    doc = json.loads(out.stdout)
    assert out.returncode == want_rc, (out.stdout, out.stderr)
    assert doc["require"] == require and doc["passed"] is (want_rc == 0)
    assert doc["probes"]["runqlat"]["can_run"] is False
    assert "sched:sched_switch" in doc["probes"]["runqlat"]["detail"]
    assert all(doc["probes"][p]["can_run"] for p in ("tcp_rtt", "tcp_retrans", "skb_drop"))


def test_passive_smoke_test_makes_no_load_and_passes_when_every_probe_is_readable(
        monkeypatch, capsys):
    from agent import cli, smoke

    def no_load(*a, **kw):
        raise AssertionError("the passive smoke test generated load")

    monkeypatch.setattr(smoke, "generate_load", no_load)
    for fn in ("tcp_transfer", "refused_connects", "busy_processes", "syn_backlog_retransmits"):
        monkeypatch.setattr(loads, fn, no_load)
    for k in [k for k in __import__("os").environ if k.startswith("EBPF_EDGE_AGENT_")]:
        monkeypatch.delenv(k)
    rc = cli.main(["smoke-test", "--passive", "1", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == 0 and doc["passed"] is True and doc["mode"] == "passive", doc
    assert doc["load"] == {"passive_seconds": 1.0}
    for name, p in doc["probes"].items():
        assert p["state"] == "up", (name, p)
        assert p.get("quiet", False) is (p["events"] == 0), (name, p)
