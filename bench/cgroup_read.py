"""CPU time per reading cycle for 500 fixture pods, and RSS over 1,000 cycles with pods coming
and going. Prints numbers; asserts nothing.

    .venv/bin/python -m bench.cgroup_read [--pods 500] [--cycles 1000] [--containers 2]

The tree (systemd driver, containerd names, every file the reader reads) is generated in a temp
dir; each churn cycle removes 5 % of the pods and creates as many new ones.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from agent.cgroups import CgroupReader

FILES = {
    "cpu.stat": "usage_usec 8421337\nuser_usec 6011456\nsystem_usec 2409881\ncore_sched.force_idle_usec 0\n"
                "nr_periods 1204\nnr_throttled 87\nthrottled_usec 3120456\nnr_bursts 0\nburst_usec 0\n",
    "cpu.max": "150000 100000\n",
    "cpu.pressure": "some avg10=0.12 avg60=0.31 avg300=0.07 total=1834221\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=902113\n",
    "memory.current": "1073741824\n",
    "memory.max": "max\n",
    "memory.stat": "".join(f"{k} {i * 4096}\n" for i, k in enumerate(
        "anon file kernel kernel_stack pagetables sec_pagetables percpu sock vmalloc shmem zswap zswapped "
        "file_mapped file_dirty file_writeback swapcached anon_thp file_thp shmem_thp inactive_anon "
        "active_anon inactive_file active_file unevictable slab_reclaimable slab_unreclaimable slab "
        "workingset_refault_anon workingset_refault_file pgscan pgsteal pgfault pgmajfault".split())),
    "memory.pressure": "some avg10=0.00 avg60=0.00 avg300=0.00 total=1200\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=800\n",
}


def write_cg(d: Path) -> None:
    d.mkdir(parents=True)
    for name, text in FILES.items():
        (d / name).write_text(text)


def add_pod(root: Path, containers: int) -> Path:
    uid = str(uuid.uuid4())
    qos = "burstable"
    pod = root / "kubepods.slice" / f"kubepods-{qos}.slice" / f"kubepods-{qos}-pod{uid.replace('-', '_')}.slice"
    write_cg(pod)
    for _ in range(containers + 1):  # + the sandbox
        write_cg(pod / f"cri-containerd-{uuid.uuid4().hex}{uuid.uuid4().hex}.scope")
    return pod


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pods", type=int, default=500)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--containers", type=int, default=2, help="app containers per pod (plus one sandbox)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cgroup-bench-"))
    try:
        root = tmp / "cg"
        write_cg(root / "kubepods.slice" / "kubepods-burstable.slice")
        pods = [add_pod(root, args.containers) for _ in range(args.pods)]
        ncg = args.pods * (args.containers + 2)
        print(f"tree: {args.pods} pods, {ncg} cgroups, {ncg * len(FILES)} files in {root}")

        for containers in (False, True):
            reader = CgroupReader(str(root), containers=containers)
            reader.read()  # warm the dentry cache
            n = 20
            c0, w0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                r = reader.read()
            cpu_ms = (time.process_time() - c0) / n * 1000
            wall_ms = (time.perf_counter() - w0) / n * 1000
            assert len(r.pods) == args.pods
            label = "pods + containers" if containers else "pods only       "
            print(f"{label}: {cpu_ms:6.1f} ms CPU per cycle ({wall_ms:.1f} ms wall), "
                  f"{r.counts.cgroups} cgroups read")

        reader = CgroupReader(str(root), containers=True)
        churn = max(1, args.pods // 20)
        marks = {}
        c0 = time.process_time()
        for i in range(args.cycles):
            for p in pods[:churn]:
                shutil.rmtree(p)
            pods = pods[churn:] + [add_pod(root, args.containers) for _ in range(churn)]
            r = reader.read()
            if i in (0, 9, 99, args.cycles // 2 - 1, args.cycles - 1):
                marks[i + 1] = rss_kib()
        per = (time.process_time() - c0) / args.cycles * 1000
        print(f"churn: {args.cycles} cycles, {churn} pods replaced per cycle ({per:.1f} ms CPU per cycle incl. churn); "
              f"last cycle {len(r.pods)} pods, vanished={r.counts.vanished}")
        print("RSS KiB after cycle: " + ", ".join(f"{k}: {v}" for k, v in marks.items()))
        print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} KiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
