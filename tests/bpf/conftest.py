"""Real-kernel tests: real BPF, real traffic, independent witnesses. Run as root (make test)."""

import os

import pytest

from agent.config import Config
from agent.probes import registry

if os.geteuid() != 0:
    pytest.skip("real-kernel tests need root (CAP_BPF, CAP_PERFMON, network namespaces)",
                allow_module_level=True)

try:
    import bcc  # noqa: F401
except ImportError as e:  # dev-setup installs python3-bpfcc; its absence is a setup error
    raise RuntimeError(f"bcc is not importable ({e}): run make dev-setup") from e


@pytest.fixture(scope="session")
def config() -> Config:
    return Config()


@pytest.fixture(scope="session")
def kernel(config):
    k = registry.detect_kernel(config)
    if k.tracefs is None:
        pytest.skip("tracefs is not mounted on this kernel")
    return k


def require_tracepoint(kernel, tp: str) -> None:
    if kernel.tracepoint(tp) is None:
        pytest.skip(f"kernel has no tracepoint {tp}")


@pytest.fixture
def lab():
    from tests.bpf.netlab import NetLab

    with NetLab() as lab:
        yield lab
