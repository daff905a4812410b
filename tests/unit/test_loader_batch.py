"""The start-up batch protocol of agent.probes.loader against stand-in children (no BPF, no
root): results in order, one per probe, a failed probe not stopping the next, a child that dies
or hangs failing the probe it was at and the later ones as not compiled, a confused child."""

import os
import sys
import textwrap

import pytest

from agent.probes.loader import CompileFailed, CompileRequest, Loaded, compile_batch

# a stand-in child: reads the request, then runs BODY with `reqs` (the probes) and `send(msg, fds)`
PRELUDE = textwrap.dedent("""
    import json, os, signal, socket, sys, time
    sock = socket.socket(fileno=int(sys.argv[-2]))
    reqs = json.loads(sock.recv(1 << 22))["probes"]
    def send(msg, fds=()):
        socket.send_fds(sock, [json.dumps(msg).encode()], list(fds))
""")


def child(body: str) -> list[str]:
    return [sys.executable, "-c", PRELUDE + textwrap.dedent(body)]


def reqs(*names):
    return [CompileRequest(n, "int x;", ("-DX",), ("m",)) for n in names]


def run(body: str, names=("a", "b", "c"), timeout: float = 10.0):
    got = []
    compile_batch(reqs(*names), timeout, lambda n, r: got.append((n, r)), child(body))
    return got


def test_each_probe_answered_in_order_and_a_failed_one_does_not_stop_the_next():
    got = run("""
        for r in reqs:
            if r["name"] == "b":
                send({"name": "b", "ok": False, "error": "b: undeclared thing"})
            else:
                fd = os.open("/dev/null", os.O_RDONLY)
                send({"name": r["name"], "ok": True, "maps": ["m"], "progs": [], "events": [],
                      "diag": "", "hwm_kb": 1024, "tree": "probe-headers", "euid": 65534}, [fd])
    """)
    assert [n for n, _ in got] == ["a", "b", "c"]
    a, b, c = (r for _, r in got)
    assert isinstance(a, Loaded) and isinstance(c, Loaded)
    assert a.tree == "probe-headers" and a.child_euid == 65534 and a.child_rss_hwm_kb == 1024
    assert a.child_pid == c.child_pid  # one child for all
    assert isinstance(b, CompileFailed) and str(b) == "b: undeclared thing"
    for loaded in (a, c):
        fd = loaded.maps["m"]
        assert not os.get_inheritable(fd)  # close-on-exec
        loaded.close()
        with pytest.raises(OSError):
            os.fstat(fd)


def test_a_child_killed_after_the_first_fails_the_one_it_was_at_and_the_rest():
    got = run("""
        fd = os.open("/dev/null", os.O_RDONLY)
        send({"name": "a", "ok": True, "maps": ["m"], "progs": [], "events": []}, [fd])
        sys.stderr.write("clang: fatal in b\\n"); sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    (na, a), (nb, b), (nc, c) = got
    assert isinstance(a, Loaded)
    a.close()
    assert isinstance(b, CompileFailed)
    assert str(b) == "compiling child killed by SIGKILL before handing over: clang: fatal in b"
    assert isinstance(c, CompileFailed)
    assert str(c) == f"not compiled: the compiling child stopped at b ({b})"


def test_a_hang_is_timed_per_probe():
    got = run("""
        send({"name": "a", "ok": False, "error": "a failed fast"})
        time.sleep(600)
    """, names=("a", "b"), timeout=1.0)
    assert str(got[0][1]) == "a failed fast"
    assert str(got[1][1]).startswith("compile timed out after 1s (child killed; compile_timeout)")


def test_a_child_answering_for_another_probe_is_not_believed():
    got = run("""
        fd = os.open("/dev/null", os.O_RDONLY)
        send({"name": "z", "ok": True, "maps": ["m"], "progs": [], "events": []}, [fd])
        time.sleep(5)
    """, names=("a", "b"))
    assert str(got[0][1]) == "the compiling child answered for 'z', not 'a'"
    assert str(got[1][1]).startswith("not compiled: the compiling child stopped at a")


def test_descriptors_that_do_not_match_the_names_are_closed_and_refused():
    got = run("""
        send({"name": "a", "ok": True, "maps": ["m", "n"], "progs": [], "events": []},
             [os.open("/dev/null", os.O_RDONLY)])
    """, names=("a",))
    assert str(got[0][1]) == "the child named 2 descriptors but sent 1"


def test_a_receiver_that_raises_does_not_leak_the_descriptors():
    held = []

    def boom(name, result):
        held.append(result)
        raise RuntimeError("bug in the receiver")

    compile_batch(reqs("a"), 10.0, boom, child("""
        send({"name": "a", "ok": True, "maps": ["m"], "progs": [], "events": []},
             [os.open("/dev/null", os.O_RDONLY)])
    """))
    assert isinstance(held[0], Loaded) and held[0].closed
