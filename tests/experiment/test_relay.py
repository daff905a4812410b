"""The TUN relay against independent witnesses: ping RTT and ``ss -ti`` srtt inside the lab's
namespaces, over the same window as the relay's own account of what it held. Also: a lab
leaves nothing behind, on success and when its block raises."""

import os
import re
import statistics
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.bpf  # real namespaces and devices (no BPF, but root and a kernel)
if os.geteuid() != 0:
    pytest.skip("network namespaces and TUN devices need root", allow_module_level=True)

from experiment.lab import RelayLab, _expect  # noqa: E402
from experiment.relay import Shape  # noqa: E402
from tests.bpf.netlab import ss_srtt_ms  # noqa: E402

PORT = 7301


def ping_ms(lab: RelayLab, n: int, interval: float = 0.05) -> list[float]:
    out = lab.client.run("ping", "-n", "-c", str(n), "-i", str(interval),
                         "-W", "1", lab.server.ip4, check=False, timeout=60).stdout
    return [float(x) for x in re.findall(r"time=([\d.]+)", out)]


def leftovers(lab: RelayLab) -> list[str]:
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    bad = [h.ns for h in (lab.client, lab.server) if h.ns in netns]
    bad += [h.dev for h in (lab.client, lab.server) if h.dev in links]
    bad += [f"pid {p}" for p in lab.pids() if os.path.exists(f"/proc/{p}")
            and "Z" not in open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0]]
    return bad


def test_delay_and_jitter_match_ping_and_ss(tmp_path):
    with RelayLab(seed=1) as lab:
        base = ping_ms(lab, 20)
        assert len(base) >= 18, base
        base_ms = statistics.median(base)

        lab.set_delay(20, 5)
        svc = lab.spawn(lab.server, sys.executable, "-m", "experiment.service", lab.server.ip4,
                        str(PORT), "--work-us", "0")
        _expect(svc, "ready")
        # one request in flight at a time (20/s, one connection): isolated packets, the case
        # where a drawn delay is exactly the delay a packet sees
        cli = lab.spawn(lab.client, sys.executable, "-m", "experiment.client", lab.server.ip4,
                        str(PORT), "--rate", "20", "--seconds", "4", "--size", "200",
                        "--max-conns", "1", "--out", str(tmp_path / "req.csv"))
        _expect(cli, "started")
        lab.relay.reset()
        pings = ping_ms(lab, 50, 0.06)  # ~3 s, while the TCP client runs
        srtt = ss_srtt_ms(lab.client, lab.server.ip4, PORT)
        held = lab.relay.stats()
        cli.wait(20)
        lat = [float(line.split(",")[1]) for line in (tmp_path / "req.csv").read_text().splitlines()
               if line.endswith(",1")]

        assert len(pings) >= 45, pings
        ba = held["ba"]["hold_ms"]
        # the relay held what it was told to (uniform 15..25 ms: median ~20); a relay process
        # the shared machine descheduled releases late, so the top is bounded at p90, not max
        # (measured beside heavy load: p90 24.3 ms, p99 31.3 ms)
        assert 18 <= ba["p50"] <= 22 and ba["p10"] >= 14.5 and ba["p90"] <= 27, held
        assert held["ab"]["hold_ms"]["p50"] < 2, held  # the other direction untouched
        # ping, over the same window, sees the relay's hold as path delay
        added = statistics.median(pings) - base_ms
        assert abs(added - ba["p50"]) <= 3, (added, held, pings)
        spread = statistics.quantiles(pings, n=10)
        assert 4 <= spread[-1] - spread[0] <= 12, (spread, pings)  # jitter is there, ±5 ms
        # TCP sees it too: the kernel's smoothed RTT of the client's connection and the
        # client's own request latency
        assert srtt, "no established connection seen by ss"
        assert abs(srtt[0] - statistics.median(pings)) <= max(4, 0.2 * statistics.median(pings)), \
            (srtt, pings)
        assert len(lat) >= 60 and 15 <= statistics.median(lat) <= 30, lat[:20]
    assert not leftovers(lab)


def test_loss_and_changes_at_run_time():
    with RelayLab(seed=2) as lab:
        lab.relay.set(ab=Shape(loss=0.5))
        lab.relay.reset()
        got = ping_ms(lab, 40, 0.02)
        st = lab.relay.stats()["ab"]
        assert st["packets"] >= 40 and 0.25 <= st["dropped"] / st["packets"] <= 0.75, st
        assert len(got) <= 40 - st["dropped"] + 2, (got, st)  # pings lost where the relay dropped
        lab.clear()
        assert len(ping_ms(lab, 10, 0.02)) == 10


def test_lab_torn_down_when_its_block_raises():
    lab = RelayLab()
    with pytest.raises(RuntimeError):
        with lab:
            lab.start_hogs(1)
            lab.set_loss(0.1)
            lab.set_rate("50mbit")
            assert lab.pids()
            raise RuntimeError("boom")
    time.sleep(0.2)
    assert not leftovers(lab)
