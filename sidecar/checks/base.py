"""The contract every check kind fulfils."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from sidecar.model import CheckResult, CheckSpec


class Check(Protocol):
    """One check of the legacy application.

    ``probe`` evaluates the evidence once. It returns a failed result for every "not ready" outcome,
    including errors such as a refused connection or a missing file; it never raises for them. The
    prober bounds it with the check's timeout by cancelling it, so a probe must clean up (close
    sockets, kill child processes) when cancelled.

    ``wakeups`` is for event-driven checks: it yields whenever the evidence may have changed (an
    inotify event, a poll that saw a new size), so the prober probes at once instead of waiting for
    the period. Checks without a source of events return ``None``.
    """

    spec: CheckSpec

    async def probe(self) -> CheckResult: ...

    def wakeups(self) -> AsyncIterator[None] | None: ...

    async def aclose(self) -> None: ...
