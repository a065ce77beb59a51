"""The registry of line sources: which :class:`~sidecar.checks._lines.LineSource` feeds a log check.

A new source is one module implementing ``LineSource`` and one factory in :data:`SOURCES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sidecar.checks._container_lines import ContainerLines, ContainerLogs, NoApi
from sidecar.checks._file_lines import FileLines
from sidecar.checks._lines import LineSource
from sidecar.checks._runner import Runner
from sidecar.clock import Clock
from sidecar.model import LogParams, LogStart

#: Why a container's output cannot be read without the API (the ``check`` command without it).
NO_API = (
    "reading a container's output needs the Kubernetes API: POD_NAME, POD_NAMESPACE and the "
    "Pod's service account token (or KUBECONFIG)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceContext:
    """What a source may use. ``runner``: the check's thread for blocking calls;
    ``poll_interval``: how often to look for changes when no events arrive (seconds);
    ``container_logs``: the API's log streams of the agent's own Pod (``None``: no API);
    ``follow``: follow new lines (``False``: read what there is once, the ``check`` command)."""

    label: str
    runner: Runner
    poll_interval: float
    clock: Clock
    container_logs: ContainerLogs | None = None
    follow: bool = True


#: ``factory(params, context)``: the source for ``params``, or ``None`` when the params are for
#: another kind of source.
SourceFactory = Callable[[LogParams, SourceContext], LineSource | None]


def _file(params: LogParams, context: SourceContext) -> LineSource | None:
    if params.path is None:
        return None
    return FileLines(
        params.path,
        from_end=params.start is LogStart.END,
        runner=context.runner,
        poll_interval=context.poll_interval,
    )


def _container_output(params: LogParams, context: SourceContext) -> LineSource | None:
    if not params.follows_output or params.output_of is None:
        return None
    return ContainerLines(
        params.output_of,
        context.container_logs or NoApi(NO_API),
        clock=context.clock,
        from_end=params.start is LogStart.END,
        follow=context.follow,
        label=context.label,
    )


#: The first factory that accepts a check's params provides its lines.
SOURCES: tuple[SourceFactory, ...] = (_file, _container_output)


def open_source(params: LogParams, context: SourceContext) -> LineSource:
    for factory in SOURCES:
        source = factory(params, context)
        if source is not None:
            return source
    raise ValueError(f"no line source accepts {params!r}")
