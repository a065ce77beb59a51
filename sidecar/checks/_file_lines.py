"""A log file as a :class:`~sidecar.checks._lines.LineSource`: the follower on the check's thread.

:class:`~sidecar.checks._follow.LogFollower` does the following (rotation, truncation,
replacement, partial lines); this module runs it on the check's
:class:`~sidecar.checks._runner.Runner` (a hung network volume must not block the event loop or
another check) and gives the wake-ups of the file (inotify, or stat polling without it).

A read abandoned by :meth:`FileLines.aclose` may still be running on the thread: whoever finishes
last, that read or ``aclose``, closes the file.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from pathlib import Path

from sidecar.checks._follow import FollowBatch, LogFollower, describe_read_error
from sidecar.checks._inotify import FileWakeups
from sidecar.checks._lines import LineBatch, Progress
from sidecar.checks._runner import Runner, RunnerClosedError


class FileLines:
    """The lines of the log file at ``path``."""

    def __init__(self, path: Path, *, from_end: bool, runner: Runner, poll_interval: float) -> None:
        self.where = str(path)
        self._path = path
        self._runner = runner
        self._follower = LogFollower(path, from_end=from_end)
        self._wakeups = FileWakeups(path, poll_interval, runner)
        # Shared with the thread: who closes the follower (see _read_job and aclose).
        self._flags = threading.Lock()
        self._reading = False
        self._closed = False

    def wakeups(self) -> AsyncIterator[None]:
        return self._wakeups.new()

    def progress(self) -> Progress:
        return Progress(done=self._follower.position, total=self._follower.size)

    async def read(self) -> LineBatch:
        try:
            batch = await self._runner.run(self._read_job)
        except RunnerClosedError:
            return LineBatch()
        except OSError as exc:
            return LineBatch(error=describe_read_error(self._path, exc))
        if batch is None:  # closed meanwhile
            return LineBatch()
        return LineBatch(
            text=batch.text,
            written_before=batch.written_before,
            rotated=batch.reset,
            more=batch.more,
            missing=f"{self._path} does not exist yet" if batch.missing else None,
        )

    def restarted(self, started_at: float) -> None:
        """Nothing to do: the file is followed all along (see the log check's forget_before)."""

    async def aclose(self) -> None:
        self._wakeups.close()
        with self._flags:
            self._closed = True
            reading = self._reading
        if not reading:  # otherwise the thread closes it when its read returns
            self._follower.close()

    def _read_job(self) -> FollowBatch | None:
        """On the runner."""
        with self._flags:
            if self._closed:
                return None
            self._reading = True
        try:
            return self._follower.read()
        finally:
            self._read_done()

    def _read_done(self) -> None:
        with self._flags:
            self._reading = False
            closed = self._closed
        if closed:
            self._follower.close()
