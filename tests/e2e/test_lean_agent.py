"""The real ``ebpf-edge-agent run`` with probes compiled out of process: no bcc/LLVM mapped,
a short first window reported truthfully, and SIGKILL leaves none of its programs loaded."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from agent.probes import registry
from agent.probes.bpfmaps import prog_loaded
from tests.e2e.agent_proc import Agent


def _prog_ids(pid: int) -> set[int]:
    """Ids of the programs the process holds descriptors of (its own, not other BPF users')."""
    ids = set()
    for fi in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            for line in fi.read_text().splitlines():
                if line.startswith("prog_id:"):
                    ids.add(int(line.split()[1]))
        except OSError:
            pass
    return ids


def test_lean_agent_reports_fast_maps_no_llvm_and_sigkill_frees_its_programs():
    with Agent("--sample-interval", "10") as a:
        t0 = time.monotonic()
        a.wait_ready(timeout=90)
        r = a.report()
        first = time.monotonic() - t0
        assert {n: s["state"] for n, s in r["probes"].items()} == {n: "up" for n in registry.names()}, r["probes"]
        # a short first window, reported as what it is (not a full sample_interval)
        assert r["window_seconds"] < 10
        maps = Path(f"/proc/{a.proc.pid}/maps").read_text()
        assert not [ln for ln in maps.splitlines()
                    if any(s in ln for s in ("libLLVM", "libclang", "libbcc"))]
        ids = _prog_ids(a.proc.pid)
        assert len(ids) >= len(registry.names())
        assert all(prog_loaded(i) for i in ids)
        print(f"\nfirst report {first:.1f}s after exec; window {r['window_seconds']:.2f}s; "
              f"RSS {a.rss_bytes() / 2**20:.1f} MiB; {len(ids)} programs")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(prog_loaded(i) for i in ids):
            time.sleep(0.05)
        assert [i for i in ids if prog_loaded(i)] == []
