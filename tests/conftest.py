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
