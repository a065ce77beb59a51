"""The ``file`` check: a marker file exists (or not), has the right content, is fresh enough.

``state=present`` succeeds when the path exists (anything ``stat`` accepts; a dangling symlink does
not exist), and if ``contains`` is set its first MiB, decoded as UTF-8 with replacement, matches
the regular expression, and if ``max_age`` is set its mtime is at most that many seconds before
``clock.time()`` (a future mtime counts as fresh). ``state=absent`` succeeds when the path does
not exist.

After :meth:`FileCheck.forget_before` (a new instance of the application), a file whose mtime is
before the instance's start (its whole second) counts as not there for ``state=present``: a
marker or heartbeat the old instance left behind is not evidence about the new one. ``state=absent``
is unchanged: a lock file that still exists, exists.

The evaluation runs on the check's own thread (a hung network volume must not block the event
loop or another check), at most one at a time: a probe cancelled by its timeout leaves its
evaluation running and the next probe waits for it before starting another. Wake-ups are the same
as the log check's; an expiring ``max_age`` is noticed by the periodic probe, not by a wake-up.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from sidecar.checks._follow import describe_read_error
from sidecar.checks._inotify import FileWakeups
from sidecar.checks._runner import Runner
from sidecar.checks.base import not_before, timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, FileParams, FileState, bounded

#: How much of the file ``contains`` looks at.
CONTENT_LIMIT: Final = 1024 * 1024
_SHOWN_LIMIT = 60
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


def evaluate(params: FileParams, now: float, not_before: float | None = None) -> tuple[bool, str]:
    """The verdict for ``params`` at wall-clock time ``now``: ``(ok, detail)``. Blocking I/O.

    ``not_before``: a present file modified before this time is older than the application's
    current instance and counts as not there."""
    path = params.path
    try:
        st: os.stat_result | None = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:
        return False, describe_read_error(path, exc)
    if params.state is FileState.ABSENT:
        return (True, f"{path} does not exist") if st is None else (False, f"{path} exists")
    if st is None:
        return False, f"{path} does not exist"
    return _present(params, st, now, not_before)


def _present(
    params: FileParams, st: os.stat_result, now: float, not_before: float | None
) -> tuple[bool, str]:
    path = params.path
    if params.max_age is not None and now - st.st_mtime > params.max_age:
        return False, f"{path} older than {params.max_age:g}s"
    if not_before is not None and st.st_mtime < not_before:
        return False, f"{path} is older than the application's current instance"
    if params.contains is None:
        return True, f"{path} exists"
    return _match_contents(path, params.contains)


def _match_contents(path: Path, contains: re.Pattern[str]) -> tuple[bool, str]:
    shown = bounded(contains.pattern, _SHOWN_LIMIT)
    try:
        data = _read_head(path, CONTENT_LIMIT)
    except FileNotFoundError:
        return False, f"{path} does not exist"
    except OSError as exc:
        return False, describe_read_error(path, exc)
    if contains.search(data.decode("utf-8", "replace")):
        return True, f'{path} matches "{shown}"'
    return False, f'{path} does not match "{shown}"'


def _read_head(path: Path, limit: int) -> bytes:
    fd = os.open(path, _OPEN_FLAGS)  # non-blocking: a FIFO without a writer reads as empty
    try:
        chunks: list[bytes] = []
        left = limit
        while left > 0:
            try:
                chunk = os.read(fd, left)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


class FileCheck:
    """Check the existence, content and freshness of ``params.path``."""

    def __init__(self, spec: CheckSpec, clock: Clock) -> None:
        if not isinstance(spec.params, FileParams):
            raise TypeError(f"{spec.label}: expected FileParams, got {type(spec.params).__name__}")
        self.spec = spec
        self._params = spec.params
        self._clock = clock
        self._job: asyncio.Future[tuple[bool, str]] | None = None
        self._runner = Runner(f"check-{spec.id}")
        self._wakeups = FileWakeups(spec.params.path, spec.timing.period, self._runner)
        self._not_before: float | None = None

    def wakeups(self) -> AsyncIterator[None]:
        return self._wakeups.new()

    def forget_before(self, started_at: float) -> None:
        floor = not_before(started_at)
        if self._params.state is FileState.PRESENT:
            self._not_before = max(floor, self._not_before or -math.inf)

    async def aclose(self) -> None:
        self._wakeups.close()
        self._runner.close()

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        while self._job is not None and not self._job.done():
            await asyncio.shield(self._job)
        call = functools.partial(evaluate, self._params, self._clock.time(), self._not_before)
        job = self._runner.submit(call)
        self._job = job
        ok, detail = await asyncio.shield(job)
        return timed_result(self._clock, started, ok, detail)
