from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
TRACEPOINT_FIXTURES = FIXTURES / "tracepoints"


def kernel_fixture_dirs() -> list[Path]:
    """Captured tracefs trees, one per kernel (names follow Debian's ABI number, so search)."""
    return sorted(p for p in TRACEPOINT_FIXTURES.iterdir() if (p / "events").is_dir())


def kernel_fixture(prefix: str) -> Path:
    for p in kernel_fixture_dirs():
        if p.name.startswith(prefix):
            return p
    raise LookupError(f"no captured tracefs fixture for a {prefix} kernel under {TRACEPOINT_FIXTURES}")


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


def _interrupted(signum, _frame):
    # SIGTERM's default action ends the process on the spot: no finally block, no fixture
    # teardown, so network namespaces, cgroups and child processes (agents, Prometheus, traffic)
    # would outlive the run. Raised as KeyboardInterrupt instead, the stack unwinds as on ^C.
    raise KeyboardInterrupt(f"interrupted by signal {signum}")


def pytest_configure(config):
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupted)


class FakeProbe:
    """The one stand-in for a probe (the Probe protocol: name, start, read, close, detail).

    ``snapshot(n)`` makes the cumulative snapshot of the n-th read (default: a count under key
    "k" growing by 5 a read). ``start_exc`` is raised by every start, ``read_exc`` by every
    read, ``fail_read_after`` makes reads after that many fail as a map read would."""

    def __init__(self, name, snapshot=None, start_exc=None, read_exc=None, fail_read_after=None,
                 on_start=None):
        from agent.model import ProbeSnapshot

        self.name = name
        self.snapshot = snapshot or (lambda n: ProbeSnapshot(name, "", 0.0, counts={"k": 5 * n}))
        self.start_exc = start_exc
        self.read_exc = read_exc
        self.fail_read_after = fail_read_after
        self.on_start = on_start
        self.starts = self.reads = self.closed = 0
        self.detail = {}

    def start(self):
        self.starts += 1
        if self.start_exc:
            raise self.start_exc
        if self.on_start:
            self.on_start()

    def read(self):
        self.reads += 1
        if self.read_exc:
            raise self.read_exc
        if self.fail_read_after is not None and self.reads > self.fail_read_after:
            raise OSError("map read failed: EFAULT")
        return self.snapshot(self.reads)

    def close(self):
        self.closed += 1
