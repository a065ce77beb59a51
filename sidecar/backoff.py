"""Exponential backoff with jitter: how every retrying loop of the agent waits.

No I/O and no imports from the package: the API loops (the Pod observer, the gate writer) and the
checks layer (a container's output followed through the API) use the same schedule.
"""

from __future__ import annotations

import random

BACKOFF_BASE = 0.5
BACKOFF_CAP = 16.0
RETRY_AFTER_CAP = 60.0


class Backoff:
    """Exponential backoff with equal jitter: half the delay is fixed, half random."""

    def __init__(self, rng: random.Random, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP):
        self._rng = rng
        self._base = base
        self._cap = cap
        self._attempt = 0

    def next_delay(self, retry_after: float | None = None) -> float:
        ceiling = min(self._cap, self._base * 2.0 ** min(self._attempt, 32))
        self._attempt += 1
        delay = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, RETRY_AFTER_CAP))
        return delay

    def reset(self) -> None:
        self._attempt = 0
