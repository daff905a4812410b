"""The agent's one backoff and one log rate-limiter (no IO, no agent imports).

Used by the probe retries (sampler), the pusher (export/extender), the Kubernetes watcher
(kube/watch) and the readers that warn about bad input (sampler, cgroups/read).
"""

from __future__ import annotations

import logging
import math
import random
import time
from typing import Callable, Dict, Optional


def backoff_delay(attempt: int, initial: float, cap: float,
                  rand: Optional[Callable[[], float]] = random.random) -> float:
    """min(cap, initial·2^attempt); with ``rand`` (jitter), uniformly within [d/2, d] so that
    many agents retrying one API server spread out; ``rand=None`` for the exact delay."""
    d = min(cap, initial * (2 ** min(attempt, 32)))
    return d if rand is None else d * (0.5 + 0.5 * rand())


class Backoff:
    """Successive delays of one retried operation: ``next()`` after a failure, ``reset()``
    after a success. ``peek`` is the delay the next failure will get."""

    def __init__(self, initial: float, cap: float,
                 rand: Optional[Callable[[], float]] = None) -> None:
        if not 0 <= initial <= cap:
            raise ValueError(f"backoff: need 0 <= initial ({initial!r}) <= cap ({cap!r})")
        self.initial, self.cap, self.rand = initial, cap, rand
        self.attempt = 0

    @property
    def peek(self) -> float:
        return backoff_delay(self.attempt, self.initial, self.cap, None)

    def next(self) -> float:
        d = backoff_delay(self.attempt, self.initial, self.cap, self.rand)
        self.attempt += 1
        return d

    def reset(self) -> None:
        self.attempt = 0


class RateLimitedLog:
    """At most one message per key per ``interval`` seconds (``math.inf``: once per key, until
    :meth:`clear`); the rest are counted and reported with the next message. Keys must come
    from a bounded set (file names, reader names, causes)."""

    def __init__(self, interval: float, logger: logging.Logger,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.logger = logger
        self.clock = clock
        self._last: Dict[str, float] = {}
        self._suppressed: Dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args) -> bool:
        """Log ``msg % args`` unless ``key`` was logged within the interval. True if logged."""
        now = self.clock()
        last = self._last.get(key)
        if last is not None and (math.isinf(self.interval) or now - last < self.interval):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        n = self._suppressed.pop(key, 0)
        self._last[key] = now
        more = f" ({n} more like this suppressed)" if n else ""
        self.logger.log(level, msg + "%s", *args, more)
        return True

    def warn(self, key: str, msg: str, *args) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def clear(self, key: str) -> None:
        """Forget ``key`` (the condition ended): its next occurrence is logged at once."""
        self._last.pop(key, None)
        self._suppressed.pop(key, None)
