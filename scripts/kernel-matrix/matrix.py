#!/usr/bin/env python3
"""Kernel matrix results: collect one run's output into JSON, render the table in docs/platforms.md.

    matrix.py collect --name SUITE --out DIR --seconds N --results DIR
    matrix.py render  --results DIR --doc docs/platforms.md [--check]   (--readme: the old name)
    matrix.py verdict --results DIR SUITE...

``collect`` turns what guest-run.sh left in DIR (check-kernel/smoke-test JSON and exit codes,
pytest's JUnit XML) into ``<results>/<SUITE>.json``. ``render`` writes the kernel x probe table
between the page's kernel-matrix markers, from those JSON files only. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from agent.probes import registry  # noqa: E402  (standard library only, like this script)

PROBES = registry.names()
SUITE_LABEL = {"bullseye": "Debian 11 bullseye", "bookworm": "Debian 12 bookworm",
               "trixie": "Debian 13 trixie", "host": "this host"}
# the live pod-cgroup check (its own column): the agent's per-pod CPU limit, CPU used,
# throttling, pressure and working set against a real pod cgroup's files
LIVE_TEST = "tests/e2e/test_pod_cgroup_live.py::test_agent_pod_limits_match_a_live_cgroup"
LIVE_FILE = "cgroup-live.json"  # the figures that test writes into the guest's OUT directory
LIVE_NOTE = """\
Live pod cgroup: `tests/e2e/test_pod_cgroup_live.py` makes a kubelet-shaped pod cgroup with
`cpu.max` "50000 100000" and `memory.max` 128 MiB in the guest's pure cgroup2, and a process in it
touches 64 MiB and spins. The agent's working set, limits, CPU used, throttled share and pressure
(its reader and report, shown here) must lie within what the pod's files, read just before and
after each of the agent's two readings, allow; the working set within 10 % of the 64 MiB."""
BEGIN_RE = re.compile(r"^<!-- kernel-matrix:begin.*-->$", re.M)
END = "<!-- kernel-matrix:end -->"

HOW_TO_RUN = """\
Produced by `make test-kernels` (`scripts/kernel-matrix/run.sh`, as root): it fetches Debian's
kernel and header packages with a private apt configuration (cached in
`/var/lib/ebpf-edge-agent/kernel-matrix`, never installed), boots each kernel once under QEMU with
virtme-ng (software emulation, 2 CPUs, 1 GiB) and runs `check-kernel`, `smoke-test` and the
real-kernel tests there, then the same on the host, one at a time. The runs below took
{timing} (`seconds` in each result, on this 2-core machine; longer while other heavy work shares
the CPUs); the matrix is not part of `make test` or CI. Per-kernel results:
`tests/kernels/results/`."""


# ---------------------------------------------------------------------------------------------
# collect


def read_exclusions(scope: str, path: Path = HERE / "exclude.txt") -> dict[str, str]:
    """Tests left out in ``scope`` ("guest" or "host"): {node id: why}."""
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] in ("all", scope) and parts[1].startswith("tests/"):
            out[parts[1]] = (parts[2] if len(parts) > 2 else "").lstrip("# ").strip()
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"error": f"{path.name}: {e}"}


def _read_rc(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _one_line(text: str, limit: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def parse_junit(text: str) -> dict:
    """pytest's JUnit XML -> {counts, tests: {node id: outcome or "outcome: why"}}."""
    root = ET.fromstring(text)
    tests = {}
    counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in root.iter("testcase"):
        module = case.get("classname", "").replace(".", "/")
        node = f"{module}.py::{case.get('name')}"
        outcome, why = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                why = el.get("message") or (el.text or "")
                break
        counts[outcome] += 1
        tests[node] = f"{outcome}: {_one_line(why)}" if why else outcome
    return {"counts": counts, "tests": dict(sorted(tests.items()))}


DEFAULT_SELECTION = "tests/bpf"  # guest-run.sh's selection (minus exclude.txt) begins so


def restricted(selection: str) -> list[str]:
    """The files a KMATRIX_PYTEST selection ran, when it is not the default one ([] then)."""
    words = selection.split()
    if not words or words[0] == DEFAULT_SELECTION:
        return []
    return sorted({w.split("::")[0] for w in words if not w.startswith("-")})


def collect(name: str, out: Path, seconds: int) -> dict:
    env = {}
    for line in (out / "env.txt").read_text().splitlines() if (out / "env.txt").exists() else []:
        k, sep, v = line.partition("=")
        if sep and " " not in k:
            env[k] = v
        else:
            env.setdefault("notes", []).append(line)
    try:
        pytest_doc = parse_junit((out / "pytest.xml").read_text())
    except (OSError, ET.ParseError) as e:
        pytest_doc = {"error": f"pytest.xml: {e}"}
    pytest_doc["exit_code"] = _read_rc(out / "pytest.rc")
    pytest_doc["selection"] = env.get("pytest_selection", "")
    pytest_doc["restricted"] = restricted(pytest_doc["selection"])
    pytest_doc["excluded"] = ({} if pytest_doc["restricted"]
                              else read_exclusions("host" if name == "host" else "guest"))
    live = _read_json(out / LIVE_FILE) if (out / LIVE_FILE).exists() else None
    return {
        "suite": name,
        "release": env.get("release", ""),
        "headers": env.get("build_utsrelease", ""),
        "seconds": seconds,
        "guest": env,
        "check_kernel": {"exit_code": _read_rc(out / "check-kernel.rc"),
                         "doc": _read_json(out / "check-kernel.json")},
        "smoke_test": {"exit_code": _read_rc(out / "smoke-test.rc"),
                       "doc": _read_json(out / "smoke-test.json")},
        "pytest": pytest_doc,
        "cgroup_live": live,
    }


# ---------------------------------------------------------------------------------------------
# render


def load_results(results: Path) -> list[dict]:
    docs = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]

    def key(d):
        nums = [int(x) for x in re.findall(r"\d+", d.get("release", ""))[:2]]
        return (d.get("suite") == "host", nums)

    return sorted(docs, key=key)


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def probe_cell(p: dict | None, features: dict | None = None, name: str = "") -> str:
    """Probe ``name``'s smoke-test result -> up / degraded (why) / unsupported (why) / down (why).
    ``features``: the kernel's check-kernel features, whose "drop reasons" line says whether
    kfree_skb has a reason field (also when skb_drop's own detail does not say so)."""
    if not p:
        return "not run"
    state = p.get("state", "?")
    reason = _one_line(p.get("reason", ""), 90)
    if state == "up":
        names = (p.get("detail") or {}).get("reason_names", "")
        if name == "skb_drop" and \
                (features or {}).get("drop reasons", "").startswith("no reason field"):
            names = names or "no reason field"
        if names.startswith("no reason field"):
            return "degraded (no drop `reason` field: every drop counted as `unknown`)"
        if not p.get("events"):
            return f"degraded ({reason or 'attached but saw no events'})"
        return "up"
    return f"{state} ({reason})" if reason else state


def _mib(v) -> str:
    return f"{v / 2**20:.1f} MiB" if isinstance(v, (int, float)) else "?"


def _share(v) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) else "n/a"


def live_cell(d: dict) -> str:
    """The live pod-cgroup check of one kernel: its test's outcome, and on a pass the agent's
    figures that agreed with the cgroup's files."""
    outcome = (d.get("pytest", {}).get("tests") or {}).get(LIVE_TEST)
    if outcome is None:
        return "not run"
    kind, _, why = outcome.partition(": ")
    if kind != "passed":
        label = "FAIL" if kind in ("failed", "error") else kind
        return f"{label} ({_one_line(why, 120)})" if why else label
    fig = d.get("cgroup_live") or {}
    a = fig.get("agent") if isinstance(fig, dict) else None
    if not isinstance(a, dict):
        return "pass"
    try:
        return (f"pass: {_mib(a.get('memory_used'))} working set for {_mib(fig.get('allocation_bytes'))} "
                f"touched, limit {_mib(a.get('memory_limit'))}; {a['cpu_used']:.2f} of "
                f"{a['cpu_limit']:g} core, {_share(a.get('cpu_throttled_ratio'))} of periods "
                f"throttled, CPU pressure {_share(a.get('cpu_pressure'))}")
    except (KeyError, TypeError, ValueError):
        return "pass"


def _tests_cell(pt: dict) -> str:
    if "counts" not in pt:
        return f"not run ({pt.get('error', '')})"
    c = pt["counts"]
    parts = [f"{c[k]} {k}" for k in ("passed", "failed", "error", "skipped") if c.get(k)]
    cell = ", ".join(parts) or "none"
    if pt.get("restricted"):
        names = ", ".join(f"`{Path(f).name}`" for f in pt["restricted"])
        cell += f" (a restricted run, KMATRIX_PYTEST: {names} only)"
    return cell


def render_block(docs: list[dict]) -> str:
    head = ["kernel", *[f"`{p}`" for p in PROBES], "smoke-test", "live pod cgroup",
            "real-kernel tests"]
    rows = [head, ["---"] * len(head)]
    notes = []
    for d in docs:
        smoke = d["smoke_test"]
        probes = (smoke.get("doc") or {}).get("probes", {})
        label = f"{d['release']} ({SUITE_LABEL.get(d['suite'], d['suite'])})"
        verdict = "pass" if smoke.get("exit_code") == 0 else f"FAIL (exit {smoke.get('exit_code')})"
        feats = (d["check_kernel"].get("doc") or {}).get("features")
        rows.append([label, *[_esc(probe_cell(probes.get(n), feats, n)) for n in PROBES], verdict,
                     _esc(live_cell(d)), _tests_cell(d["pytest"])])
        for node, outcome in (d["pytest"].get("tests") or {}).items():
            if outcome != "passed":
                notes.append(f"- {d['release']}: `{node.split('::')[-1]}` {_esc(outcome)}")
    lines = [HOW_TO_RUN.format(timing=timing(docs)), ""]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", LIVE_NOTE]
    if notes:
        lines += ["", "Tests not passing:", ""] + notes
    excluded: dict[str, tuple[str, list[str]]] = {}
    for d in docs:
        for node, why in (d["pytest"].get("excluded") or {}).items():
            excluded.setdefault(node, (why, []))[1].append(d["suite"])
    if excluded:
        lines += ["", "Left out of the runs above (the host's `make test` runs them all):", ""]
        for node, (why, suites) in sorted(excluded.items()):
            where = "everywhere" if len(suites) == len(docs) else "on " + ", ".join(suites)
            lines.append(f"- `{node.split('::')[-1]}` ({where}): {_esc(why)}")
    return "\n".join(lines)


def timing(docs: list[dict]) -> str:
    """How long each recorded run took: "5.10.0-32-amd64 35 min, 6.1.0-50-amd64 15 min: 50 min in all"."""
    secs = [int(d.get("seconds", 0)) for d in docs]
    each = ", ".join(f"{d['release']} {max(1, round(t / 60))} min" for d, t in zip(docs, secs))
    return f"{each}: {max(1, round(sum(secs) / 60))} min in all" if len(docs) > 1 else each


SUMMARY_BEGIN_RE = re.compile(r"^<!-- kernel-summary:begin.*-->$", re.M)
SUMMARY_END = "<!-- kernel-summary:end -->"


def _span(page: str, begin: re.Pattern = BEGIN_RE, end_marker: str = END) -> tuple[int, int]:
    m = begin.search(page)
    end = page.find(end_marker)
    if not m or end < m.end():
        raise ValueError(f"no {end_marker.split()[1].split(':')[0]}:begin/end markers in the page")
    return m.end(), end


def replace_block(readme: str, block: str, begin: re.Pattern = BEGIN_RE, end_marker: str = END) -> str:
    start, end = _span(readme, begin, end_marker)
    return readme[:start] + "\n" + block + "\n" + readme[end:]


def current_block(readme: str, begin: re.Pattern = BEGIN_RE, end_marker: str = END) -> str:
    start, end = _span(readme, begin, end_marker)
    return readme[start:end].strip("\n")


def render_summary(docs: list[dict]) -> str:
    """The README's short table: per kernel, how many probes came up with events, the smoke
    test, the live pod-cgroup check and the real-kernel tests (details: docs/platforms.md)."""
    rows = [["kernel", "probes up with events", "smoke-test", "live pod cgroup", "real-kernel tests"]]
    rows.append(["---"] * len(rows[0]))
    for d in docs:
        probes = (d["smoke_test"].get("doc") or {}).get("probes", {})
        feats = (d.get("check_kernel", {}).get("doc") or {}).get("features")
        cells = {n: probe_cell(probes.get(n), feats, n) for n in PROBES}
        up = [n for n, c in cells.items() if c == "up"]
        other = "; ".join(f"`{n}` {c}" for n, c in cells.items() if c != "up")
        smoke = "pass" if d["smoke_test"].get("exit_code") == 0 else "FAIL"
        live = live_cell(d)
        live = live.split(":")[0] if live.startswith("pass") else live.split(" (")[0]
        rows.append([f"{d['release']} ({SUITE_LABEL.get(d['suite'], d['suite'])})",
                     _esc(f"{len(up)} of {len(PROBES)}" + (f" ({other})" if other else "")),
                     smoke, _esc(live), _esc(_tests_cell(d["pytest"]))])
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def expected_block(results: Path) -> str:
    docs = load_results(results)
    return render_block(docs)


# ---------------------------------------------------------------------------------------------
# verdict


def problems(doc: dict) -> list[str]:
    out = []
    if doc["check_kernel"].get("exit_code") != 0:
        out.append(f"check-kernel exit {doc['check_kernel'].get('exit_code')}")
    if doc["smoke_test"].get("exit_code") != 0:
        out.append(f"smoke-test exit {doc['smoke_test'].get('exit_code')}")
    pt = doc["pytest"]
    if pt.get("exit_code") != 0:
        out.append(f"pytest exit {pt.get('exit_code')}")
    if doc.get("suite") != "host" and doc.get("headers") != doc.get("release"):
        out.append(f"BCC used headers of {doc.get('headers')!r}, not {doc.get('release')!r}")
    live = (pt.get("tests") or {}).get(LIVE_TEST, "")
    if doc.get("suite") != "host" and live.startswith("skipped"):
        # a guest's pure cgroup2 has the controllers: a skip there means the check broke
        out.append(f"live pod-cgroup test {live}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--name", required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--seconds", type=int, default=0)
    c.add_argument("--results", type=Path, required=True)
    r = sub.add_parser("render")
    r.add_argument("--results", type=Path, required=True)
    r.add_argument("--doc", "--readme", dest="doc", type=Path, required=True,
                   help="the page holding the kernel-matrix markers (docs/platforms.md)")
    r.add_argument("--summary", type=Path,
                   help="also the page holding the kernel-summary markers (README.md)")
    r.add_argument("--check", action="store_true", help="exit 1 if a page is out of date")
    v = sub.add_parser("verdict")
    v.add_argument("--results", type=Path, required=True)
    v.add_argument("suites", nargs="+")
    a = ap.parse_args(argv)

    if a.cmd == "collect":
        doc = collect(a.name, a.out, a.seconds)
        a.results.mkdir(parents=True, exist_ok=True)
        (a.results / f"{a.name}.json").write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        return 0
    if a.cmd == "render":
        block = expected_block(a.results)
        pages = [(a.doc, block, BEGIN_RE, END)]
        if a.summary:
            pages.append((a.summary, render_summary(load_results(a.results)),
                          SUMMARY_BEGIN_RE, SUMMARY_END))
        if a.check:
            return 0 if all(current_block(p.read_text(), b, e) == blk
                            for p, blk, b, e in pages) else 1
        for page, blk, begin, end in pages:
            page.write_text(replace_block(page.read_text(), blk, begin, end))
        print(block)
        return 0
    rc = 0
    for s in a.suites:
        path = a.results / f"{s}.json"
        if not path.exists():
            print(f"{s}: no results", file=sys.stderr)
            rc = 1
            continue
        bad = problems(json.loads(path.read_text()))
        print(f"{s}: " + ("; ".join(bad) if bad else "ok"), file=sys.stderr)
        rc |= bool(bad)
    return rc


if __name__ == "__main__":
    sys.exit(main())
