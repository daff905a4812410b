"""Reports and an Extender for the extender's tests: the agent's golden payload (kept equal to
what the agent builds by the agent's own tests) varied per node, and a fake clock."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from extender.app import Extender
from extender.config import ExtenderConfig

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((ROOT / "tests" / "fixtures" / "golden" / "payload.json").read_text())
FIXTURES = ROOT / "tests" / "fixtures" / "extender"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


def report(node: str = "node-a", *, instance: str = "instance-aaaa", seq: int = 1,
           score: float | None = 80.0, push_interval: float = 10.0, **fields: Any) -> dict:
    r = copy.deepcopy(GOLDEN)
    r.update(node_name=node, agent_instance=instance, sequence=seq, node_score=score,
             push_interval_seconds=push_interval)
    r.update(fields)
    return r


def body(r: dict) -> bytes:
    return json.dumps(r).encode()


def make(clock: FakeClock | None = None, **cfg: Any) -> tuple[Extender, FakeClock]:
    clock = clock or FakeClock()
    return Extender(ExtenderConfig(**cfg), clock=clock), clock


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())
