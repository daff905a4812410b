"""The fixed lab load the kernel-side benchmarks run under (two namespaces, bounded in time).

- a paced 80 Mbit/s IPv4 TCP flow with 3 % random iptables drop on the receiver (retransmits,
  NETFILTER_DROP drops) through a 200 Mbit/s tbf, plus an unpaced IPv6 bulk flow (tcp_probe at
  the link's line rate);
- a paced UDP stream to a closed port (~UDP_PPS packets/s, NO_SOCKET drops: kfree_skb at a
  steady rate);
- for the middle half of the run, twice as many busy processes as CPUs (run-queue latency);
- TCP connection churn (~CONNECT_RATE connects/s, every other one to a closed port: connect
  latency, failed and passive opens, sock:inet_sock_set_state at a steady rate).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from tests.bpf.netlab import NetLab

UDP_PPS = 5000
CONNECT_RATE = 200

CONNECT_CHURN = """
import socket, sys, time
host, port, closed, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
end = time.monotonic() + float(sys.argv[5])
t0, n = time.monotonic(), 0
while time.monotonic() < end:
    due = int((time.monotonic() - t0) * rate)
    while n < due and time.monotonic() < end:
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect((host, closed if n % 2 else port))
        except OSError:
            pass
        s.close()
        n += 1
    time.sleep(0.005)
"""

UDP_FLOOD = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
dst = (sys.argv[1], 9)  # discard port, nothing listens
pps, end = float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
t0, n = time.monotonic(), 0
while True:
    now = time.monotonic()
    if now >= end:
        break
    due = int((now - t0) * pps)
    while n < due:
        s.sendto(b"x" * 64, dst)
        n += 1
    time.sleep(0.002)
"""


def run_lab_load(seconds: float, udp_pps: int = UDP_PPS, connect_rate: int = CONNECT_RATE) -> None:
    with NetLab() as lab:
        lab.a.limit_rate("200mbit", "64kbit", "50ms")
        lab.b.run("iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "5201", "-m",
                  "statistic", "--mode", "random", "--probability", "0.03", "-j", "DROP")
        lab.spawn(lab.b, "sink", "::", "5201", str(seconds + 10))
        lab.spawn(lab.b, "sink", "::", "5202", str(seconds + 10))  # the churn's listener
        time.sleep(0.5)
        lab.spawn(lab.a, "send", lab.b.ip4, "5201", str(seconds), "80e6")
        lab.spawn(lab.a, "send", lab.b.ip6, "5201", str(seconds))
        udp = subprocess.Popen(lab.a.cmd(sys.executable, "-c", UDP_FLOOD, lab.b.ip4,
                                         str(udp_pps), str(seconds)))
        churn = subprocess.Popen(lab.a.cmd(sys.executable, "-c", CONNECT_CHURN, lab.b.ip4, "5202",
                                           "5203", str(connect_rate), str(seconds)))
        code = f"import time\nend=time.monotonic()+{seconds / 2}\nwhile time.monotonic()<end: pass\n"
        time.sleep(seconds / 4)
        hogs = [subprocess.Popen([sys.executable, "-c", code])
                for _ in range(2 * (os.cpu_count() or 1))]
        for h in hogs:
            h.wait()
        time.sleep(seconds / 4 + 0.5)
        udp.wait(timeout=10)
        churn.wait(timeout=10)
