"""Where a log check's lines come from: the :class:`LineSource` interface and its registry.

The log check (``log.py``) only matches lines and keeps its state; a line source finds the lines:
the file follower (``_file_lines.py``) and a container's output followed through the API
(``_container_lines.py``). Another source is one new module implementing :class:`LineSource` plus
one entry in the registry, ``_sources.SOURCES``.

The contract
    :meth:`LineSource.read` returns what is new since the previous call as a :class:`LineBatch`
    of complete lines, in order, each line exactly once. The log check never has two reads
    outstanding. A source that is behind says ``more=True`` and is called again at once; between
    those calls the check matches the batch (on its own thread when the batch is big). Problems
    are not exceptions: ``error`` says what is wrong (the check fails with it), ``missing`` that
    there is nothing to follow right now (nothing read yet, or the file is gone). A source that
    was rotated (a file truncated, replaced, deleted) says so in ``rotated``, for diagnostics
    only: rotation is not an application event and the check keeps its state.

    ``written_before`` bounds when the batch's lines were written (epoch seconds), for a heartbeat's
    age and for :meth:`~sidecar.checks.base.Check.forget_before`: a file source gives the file's
    modification time for content that was there before it opened the file; a container stream
    gives the timestamp of the batch's last line. ``None``: the lines are new, written at the
    latest when read. A source that knows when each line was written (a container's output: the
    runtime stamps every line) also gives ``times``, one per line; a line's own time then counts.
    A batch never mixes lines of two instances of a container (two streams).

    Blocking calls run on the :class:`~sidecar.checks._runner.Runner` the check hands to the
    source (never the loop's default executor). ``wakeups()`` yields when there may be new lines
    (or ``None``: the prober's period only). ``progress()`` says how far a catch-up has come.
    ``restarted(started_at)``: the Pod's status shows a new instance of the followed container,
    started at ``started_at`` (epoch seconds, whole): a source that waits to reconnect to it may do
    so now (a file source ignores it). ``aclose()`` releases everything; a read in flight may
    finish later, its result dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class LineBatch:
    """What one :meth:`LineSource.read` found.

    ``text``: complete lines, each ending with ``"\\n"`` (``""`` when there are none).
    ``written_before``: every line was written at the latest at this time (epoch seconds);
    ``None``: at the latest when read. ``times``: when each line was written (epoch seconds), one
    per line, from sources that know it; ``None``: ``written_before`` bounds them. ``rotated``:
    the source was rotated before these lines (diagnostics only). ``more``: there is more to read
    now. ``missing``: after these lines there is nothing to follow, and why (``"/logs/app.log does
    not exist yet"``). ``error``: the source cannot be read, and why; a later read may succeed.
    """

    text: str = ""
    written_before: float | None = None
    times: tuple[float, ...] | None = None
    rotated: bool = False
    more: bool = False
    missing: str | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Progress:
    """How far a source is: ``done`` of ``total`` bytes known so far."""

    done: int
    total: int


class LineSource(Protocol):
    """The lines of one log check (see the module docstring for the contract)."""

    #: How details name the source: the path of a file, ``the output of container app``.
    where: str

    async def read(self) -> LineBatch: ...

    def wakeups(self) -> AsyncIterator[None] | None: ...

    def progress(self) -> Progress | None: ...

    def restarted(self, started_at: float) -> None: ...

    async def aclose(self) -> None: ...
