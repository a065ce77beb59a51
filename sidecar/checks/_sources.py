"""The registry of line sources: which :class:`~sidecar.checks._lines.LineSource` feeds a log check.

A new source is one module implementing ``LineSource`` and one factory in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable

from sidecar.checks._file_lines import FileLines
from sidecar.checks._lines import LineSource
from sidecar.checks._runner import Runner
from sidecar.model import LogParams, LogStart

#: ``factory(params, runner, poll_interval)``: the source for ``params``, or ``None`` when the
#: params are for another kind of source. ``runner``: the check's thread for blocking calls;
#: ``poll_interval``: how often to look for changes when no events arrive (seconds).
SourceFactory = Callable[[LogParams, Runner, float], LineSource | None]


def _file(params: LogParams, runner: Runner, poll_interval: float) -> LineSource | None:
    return FileLines(
        params.path,
        from_end=params.start is LogStart.END,
        runner=runner,
        poll_interval=poll_interval,
    )


#: The first factory that accepts a check's params provides its lines.
SOURCES: tuple[SourceFactory, ...] = (_file,)


def open_source(params: LogParams, runner: Runner, poll_interval: float) -> LineSource:
    for factory in SOURCES:
        source = factory(params, runner, poll_interval)
        if source is not None:
            return source
    raise ValueError(f"no line source accepts {params!r}")
