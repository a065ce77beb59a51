"""A container's output (stdout and stderr) as a :class:`~sidecar.checks._lines.LineSource`.

A log check with ``CHECK_<ID>_CONTAINER=<name>`` and no ``CHECK_<ID>_PATH`` reads what container
<name> of the agent's own Pod writes to stdout and stderr, as ``kubectl logs -f --timestamps``
shows it: ``GET pods/<own pod>/log?container=<name>&follow=true&timestamps=true``. This module
holds the policy (when to connect, from where, what to skip, when to stop waiting); it reaches
the API only through :class:`ContainerLogs`, a small protocol that the agent implements over its
API transport (``sidecar/podlogs.py``): the checks layer never imports the API.

Following
    One stream at a time, read by a task of the source's own, started by the first ``read`` or
    ``wakeups``. Lines wait in a buffer until the log check reads them (``wakeups`` fires when
    lines arrive); a buffer of more than :data:`BUFFER_LIMIT` characters stops the reading until
    the check has caught up (the server then waits: nothing is dropped). The container runtime
    stamps every line (RFC 3339 with nanoseconds): each batch carries each line's time, which is
    the time a match counts from (max age, a new instance's start).

Reconnecting
    A stream ends when the container exits, when the kubelet rotates the log file (older kubelets,
    kubernetes#44406), when the API server or the kubelet restarts, or when it stays silent for
    :data:`SILENCE` seconds. A silent container is normal: reconnecting is cheap (one GET that
    sends the lines of one second again), and renews a connection that a load balancer with an
    idle timeout (4 minutes on Azure's, 350 s on AWS's NLB) would otherwise drop without a word.
    The source connects again with ``sinceTime`` = the second of the last line. The server honours
    whole seconds only (the API server passes ``sinceTime`` on to the kubelet as RFC 3339 without
    fractions), so the lines of that second come again: the source remembers the lines (time and
    text) it delivered within that second and skips each of them once. A stream that ended at once
    without anything new (the container is not running, e.g. in CrashLoopBackOff), a refused
    request and a broken stream are retried with the agent's backoff (0.5 s doubling to 16 s).

A new instance of the container
    The old instance's stream ends when the kubelet notices the exit; the container's log
    (without ``previous``) is then the new instance's, and read from the last second it gives the
    new instance's lines from its start (they are all later): nothing of the new instance is lost
    and nothing of the old one read again. :meth:`ContainerLines.restarted` (the Pod's status
    shows the new instance) cuts the waiting short: a backoff in progress ends, and a stream opened
    before the new instance started (the old one's) is replaced at once.

Failures
    :class:`ContainerLogs` classifies a refusal (403: the Role lacks ``get pods/log``; 400: the
    container is not running yet; 5xx, no answer ...). Each kind is logged once when it starts and
    once when it ends (``container_log_failed``, ``container_log_recovered``; "not running yet" at
    debug level only: every Pod start has it). ``forbidden`` and ``rejected`` fail the check with
    the reason in its detail (``error``); the other kinds are transient: the check keeps its latest
    match (an interrupted stream is no evidence) and, without one, says why nothing was read
    (``missing``).

Not covered (as ``kubectl logs -f``): lines in a rotated file that were not read before the
rotation, when the stream ended with it (kubelets that follow the rotation in the stream lose
nothing); a second with more than :data:`SEEN_LIMIT` lines at a reconnect: its excess lines come
twice (harmless: a replay repeats a stretch of the log in order, the latest match stays the same).
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import functools
import random
import re
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Final, Protocol

import structlog

from sidecar.backoff import BACKOFF_BASE, BACKOFF_CAP, Backoff
from sidecar.checks._lines import LineBatch, Progress
from sidecar.clock import Clock

#: A stream without a byte for this long is renewed (see the module docstring).
SILENCE: Final = 120.0
#: A stream that ends sooner than this without a new line does not count as a recovery.
SHORTEST_STREAM: Final = 1.0
#: Characters of lines per batch, like the file follower's batches.
BATCH_CHARS: Final = 1024 * 1024
#: Characters buffered before the stream is no longer read until the check catches up.
BUFFER_LIMIT: Final = 4 * 1024 * 1024
#: Lines of the last second remembered to skip them when they come again after a reconnect.
SEEN_LIMIT: Final = 10_000
_NS: Final = 1_000_000_000


# --- the protocol the agent implements over its API transport -------------------------------------


@dataclass(frozen=True, slots=True)
class LogLine:
    """One line of a container's output: the runtime's timestamp (RFC 3339, as the kubelet wrote
    it) and the text, without its newline, decoded, at most 64 KiB."""

    stamp: str
    text: str


class LogStreamError(Exception):
    """A stream that broke (``idle``: it was silent for longer than allowed; else a transport
    error, ``str()`` says which)."""

    def __init__(self, message: str, *, idle: bool = False) -> None:
        super().__init__(message)
        self.idle = idle


class LogStream(Protocol):
    """An open log stream. Iterating yields its lines; it ends when the server ends the stream and
    raises :class:`LogStreamError` when it breaks. ``close()`` ends it (a read in progress ends
    too, with or without an error)."""

    def __aiter__(self) -> AsyncGenerator[LogLine, None]: ...

    def close(self) -> None: ...


class RefusalKind(StrEnum):
    NOT_RUNNING = "not_running"  # 400: the container has no output to serve (yet)
    FORBIDDEN = "forbidden"  # 403: the Role lacks get on pods/log
    UNAUTHORIZED = "unauthorized"  # 401 after the token was read again
    GONE = "gone"  # 404: the Pod is gone
    THROTTLED = "throttled"  # 429
    UNAVAILABLE = "unavailable"  # no answer, 5xx, a broken stream
    REJECTED = "rejected"  # any other answer


#: Refusals that fail the check: they last until someone changes something.
FAILING: Final = frozenset({RefusalKind.FORBIDDEN, RefusalKind.REJECTED})


@dataclass(frozen=True, slots=True, kw_only=True)
class LogRefusal:
    """Why a log stream did not open. ``message``: for the agent's log, with what to fix;
    ``detail``: a few words for the check's result (and so the gate's message)."""

    kind: RefusalKind
    message: str
    detail: str
    retry_after: float | None = None


class ContainerLogs(Protocol):
    """Opens log streams of the containers of the agent's own Pod."""

    async def open(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> LogStream | LogRefusal:
        """``GET pods/<own pod>/log?container=...&timestamps=true`` with ``sinceTime=since``
        (RFC 3339), ``tailLines``, ``follow``; a stream silent for ``inactivity`` seconds raises
        :class:`LogStreamError` with ``idle``."""
        ...


class NoApi:
    """:class:`ContainerLogs` where there is no API access: every request is refused, saying why."""

    def __init__(self, why: str) -> None:
        self._why = why

    async def open(
        self,
        container: str,
        *,
        since: str | None,
        tail_lines: int | None,
        follow: bool,
        inactivity: float,
    ) -> LogStream | LogRefusal:
        return LogRefusal(kind=RefusalKind.REJECTED, message=self._why, detail=self._why)


# --- timestamps ----------------------------------------------------------------------------------

_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")


def stamp_ns(stamp: str) -> int | None:
    """An RFC 3339 time with up to nine fractional digits, as nanoseconds since the epoch."""
    match = _STAMP.fullmatch(stamp)
    if match is None:
        return None
    seconds = _epoch_seconds(match[1], match[3])
    if seconds is None:
        return None
    return seconds * _NS + int((match[2] or "").ljust(9, "0"))


@functools.lru_cache(maxsize=64)
def _epoch_seconds(whole: str, zone: str) -> int | None:
    try:
        seconds = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None
    if zone != "Z":
        sign = -1 if zone[0] == "-" else 1
        seconds -= sign * (int(zone[1:3]) * 3600 + int(zone[4:6]) * 60)
    return seconds


def since_time(second: int) -> str:
    """The ``sinceTime`` of a whole second (what the server honours)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))


# --- the source -----------------------------------------------------------------------------------


@dataclass(slots=True)
class _Segment:
    """Buffered lines of one stream (a batch never mixes two streams: two instances)."""

    stream: int
    lines: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    """How a stream ended."""

    new_lines: int
    lasted: float
    idle: bool = False
    replaced: bool = False
    broken: str | None = None

    @property
    def useful(self) -> bool:
        """Worth reconnecting at once: the stream did its job (or was replaced on purpose)."""
        if self.new_lines or self.idle or self.replaced:
            return True
        return self.broken is None and self.lasted >= SHORTEST_STREAM


class ContainerLines:
    """The output of ``container`` (a container of the agent's own Pod), through ``logs``.

    ``from_end``: the lines written after the first connection only. ``follow=False``: read the
    output there is once, to its end (the ``check`` command): ``read`` then waits for lines.
    """

    def __init__(
        self,
        container: str,
        logs: ContainerLogs,
        *,
        clock: Clock,
        from_end: bool = False,
        follow: bool = True,
        label: str = "",
        rng: random.Random | None = None,
        silence: float = SILENCE,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        batch_chars: int = BATCH_CHARS,
        buffer_limit: int = BUFFER_LIMIT,
        seen_limit: int = SEEN_LIMIT,
    ) -> None:
        self.where = f"the output of container {container}"
        self.container = container
        self._logs = logs
        self._clock = clock
        self._from_end = from_end
        self._follow = follow
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._silence = silence
        self._backoff = (backoff_base, backoff_cap)
        self._batch_chars = batch_chars
        self._buffer_limit = buffer_limit
        self._seen_limit = seen_limit
        self._log = structlog.get_logger().bind(check=label, container=container)
        # the buffer
        self._segments: deque[_Segment] = deque()
        self._buffered = 0
        self._room = asyncio.Event()
        self._version = 0
        self._changed = asyncio.Event()
        # the stream
        self._task: asyncio.Task[None] | None = None
        self._stream: LogStream | None = None
        self._streams = 0
        self._opened_at = 0.0  # wall clock, when the current stream was asked for
        self._stale = False  # the stream being opened may be an old instance's
        self._replacing = False
        self._nudged = asyncio.Event()
        self._done = False  # follow=False: read to the end (or refused)
        self._closed = False
        # where we are
        self._second: int | None = None  # the latest second a line was stamped with
        self._seen: Counter[tuple[int, int]] = Counter()  # (ns, hash(text)) in that second
        self._first_second: int | None = None  # from_end: the second of the first connection
        # failures
        self._problem: LogRefusal | None = None
        self._logged: RefusalKind | None = None
        self._stream_failed = False
        self.requests = 0  # streams asked for (tests, diagnostics)

    # --- LineSource -----------------------------------------------------------------------------

    async def read(self) -> LineBatch:
        self._start()
        if not self._follow:
            while not self._segments and not self._done:
                await self._wait_change(self._version)
        if self._segments:
            return self._take()
        return self._state()

    def wakeups(self) -> AsyncIterator[None]:
        return self._wakeups()

    def progress(self) -> Progress | None:
        return None

    def restarted(self, started_at: float) -> None:
        self._nudged.set()
        # A stream asked for before the new instance started (whole seconds) may be the old
        # instance's: replace it; the next one is the new instance's.
        if self._opened_at < started_at + 1:
            self._stale = True
            self._replace()

    async def aclose(self) -> None:
        self._closed = True
        if self._stream is not None:
            self._stream.close()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    # --- the buffer -------------------------------------------------------------------------------

    def _take(self) -> LineBatch:
        segment = self._segments[0]
        count, chars = 0, 0
        for line in segment.lines:
            if count and chars + len(line) + 1 > self._batch_chars:
                break
            count += 1
            chars += len(line) + 1
        lines, times = segment.lines[:count], segment.times[:count]
        del segment.lines[:count], segment.times[:count]
        if not segment.lines:
            self._segments.popleft()
        self._buffered -= chars
        if self._buffered < self._buffer_limit:
            self._room.set()
        state = self._state()
        return LineBatch(
            text="\n".join(lines) + "\n",
            written_before=times[-1],
            times=tuple(times),
            more=bool(self._segments) or state.error is not None or self._rest_to_come,
            missing=state.missing,
        )

    @property
    def _rest_to_come(self) -> bool:
        """Reading once (``follow=False``) and not at the end yet: ``read`` waits for the rest."""
        return not self._follow and not self._done

    def _state(self) -> LineBatch:
        problem = self._problem
        if problem is None:
            return LineBatch()
        if problem.kind in FAILING:
            return LineBatch(error=f"cannot read {self.where}: {problem.detail}")
        return LineBatch(missing=f"{self.where} cannot be read now: {problem.detail}")

    def _append(self, text: str, ns: int) -> None:
        if not self._segments or self._segments[-1].stream != self._streams:
            self._segments.append(_Segment(self._streams))
        segment = self._segments[-1]
        segment.lines.append(text)
        segment.times.append(ns / _NS)
        was_empty = not self._buffered
        self._buffered += len(text) + 1
        if was_empty:
            self._bump()

    def _bump(self) -> None:
        """Something changed: lines arrived (into an empty buffer), a failure began or ended."""
        self._version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, seen: int) -> None:
        while self._version == seen:
            await self._changed.wait()

    async def _wakeups(self) -> AsyncIterator[None]:
        self._start()
        seen = self._version
        while True:
            await self._wait_change(seen)
            seen = self._version
            yield None

    # --- the stream -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._task is None and not self._closed and not self._done:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"follow {self.where}"
            )

    async def _run(self) -> None:
        backoff = Backoff(self._rng, *self._backoff)
        try:
            while not self._closed:
                self._nudged.clear()
                self._stale = False
                self._opened_at = self._clock.time()
                since, tail = self._position()
                opened = await self._logs.open(
                    self.container,
                    since=since,
                    tail_lines=tail,
                    follow=self._follow,
                    inactivity=self._silence,
                )
                self.requests += 1
                if isinstance(opened, LogRefusal):
                    self._failed(opened)
                    if not self._follow:
                        return
                    await self._pause(backoff.next_delay(opened.retry_after))
                    continue
                if not self._stream_failed:
                    self._recovered()
                outcome = await self._consume(opened)
                if not self._follow:
                    if outcome.broken is not None:
                        self._failed(_broken(outcome.broken))
                    return
                if outcome.useful:
                    if outcome.new_lines or outcome.lasted >= SHORTEST_STREAM:
                        self._stream_failed = False
                        self._recovered()
                        backoff.reset()
                    continue
                if outcome.broken is not None:
                    self._stream_failed = True
                    self._failed(_broken(outcome.broken))
                await self._pause(backoff.next_delay())
        finally:
            if not self._follow:
                self._done = True
                self._bump()

    async def _consume(self, stream: LogStream) -> _Outcome:
        self._streams += 1
        self._stream = stream
        started = self._clock.monotonic()
        if self._stale:
            self._replace()
        floor = None if self._second is None else self._second * _NS
        replay = Counter(self._seen)
        new = 0
        idle, broken = False, None
        try:
            async with contextlib.aclosing(stream.__aiter__()) as lines:
                async for line in lines:
                    new += self._take_in(line, floor, replay)
                    if self._buffered >= self._buffer_limit:
                        self._room.clear()
                        await self._room.wait()
        except LogStreamError as err:
            idle = err.idle
            broken = None if err.idle else str(err)
        finally:
            self._stream = None
            with contextlib.suppress(Exception):
                stream.close()
        replaced, self._replacing = self._replacing, False
        return _Outcome(
            new_lines=new,
            lasted=self._clock.monotonic() - started,
            idle=idle,
            replaced=replaced,
            broken=None if replaced else broken,
        )

    def _take_in(self, line: LogLine, floor: int | None, replay: Counter[tuple[int, int]]) -> int:
        """Buffer ``line`` unless it was sent before; 1 if it is new, else 0."""
        ns = stamp_ns(line.stamp)
        if ns is None:  # not stamped by a runtime: count it as written when it was read
            ns = int(self._clock.time() * _NS)
        if floor is not None and ns < floor:
            return 0  # before the second asked for: sent already
        key = (ns, hash(line.text))
        if replay[key] > 0:  # sent again: sinceTime has whole seconds
            replay[key] -= 1
            return 0
        self._remember(ns, key)
        self._append(line.text, ns)
        return 1

    def _replace(self) -> None:
        """End the current stream on purpose (its successor is asked for at once)."""
        stream = self._stream
        if stream is not None and not self._replacing:
            self._stale = False
            self._replacing = True
            stream.close()

    def _remember(self, ns: int, key: tuple[int, int]) -> None:
        second = ns // _NS
        if self._second is None or second > self._second:
            self._second = second
            self._seen.clear()
        if second == self._second and len(self._seen) < self._seen_limit:
            self._seen[key] += 1

    def _position(self) -> tuple[str | None, int | None]:
        """Where the next stream starts: ``(sinceTime, tailLines)``."""
        if self._second is not None:
            return since_time(self._second), None
        if self._first_second is not None:
            return since_time(self._first_second), None
        if self._from_end:
            self._first_second = int(self._clock.time())  # the next connections: since then
            return None, 0
        return None, None

    async def _pause(self, delay: float) -> None:
        """Wait ``delay`` seconds, or until a new instance of the container started."""
        if self._nudged.is_set():
            return
        sleeper = asyncio.ensure_future(self._clock.sleep(delay))
        waker = asyncio.ensure_future(self._nudged.wait())
        try:
            await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    # --- failures, logged once per kind ---------------------------------------------------------

    def _failed(self, refusal: LogRefusal) -> None:
        before = self._problem
        self._problem = refusal
        if before is None or (before.kind, before.detail) != (refusal.kind, refusal.detail):
            self._bump()
        if self._logged is refusal.kind:
            return
        self._logged = refusal.kind
        if refusal.kind is RefusalKind.NOT_RUNNING:
            self._log.debug("container_log_waiting", reason=refusal.message)
            return
        log = self._log.error if refusal.kind in FAILING else self._log.warning
        log("container_log_failed", kind=str(refusal.kind), error=refusal.message)

    def _recovered(self) -> None:
        if self._problem is None:
            return
        self._problem = None
        self._bump()
        logged, self._logged = self._logged, None
        if logged is not None and logged is not RefusalKind.NOT_RUNNING:
            self._log.info("container_log_recovered", after=str(logged))


def _broken(message: str) -> LogRefusal:
    return LogRefusal(
        kind=RefusalKind.UNAVAILABLE,
        message=f"the log stream broke: {message}",
        detail=f"the log stream broke: {message}",
    )
