"""A check's own thread for its blocking calls: file reads, stats, inotify watches, name lookups.

Why not the event loop's default executor: it is shared, so one check whose calls hang (a name
server that never answers, a hung network volume) would occupy its few threads and every other
check would queue behind it; and ``asyncio.run`` joins its threads at exit, so a call stuck in
``getaddrinfo`` would hold up SIGTERM for as long as the resolver retries. A :class:`Runner` is one
daemon thread, started on first use: its calls queue only behind the same check's calls, and
nothing waits for it at exit.

Callers bound their waits (the prober's timeout cancels a probe). A call that outlives its caller
runs to its end and its result is dropped. The checks keep at most one call of a kind outstanding
(a probe that finds one still running waits for that one instead of queueing another), so a hung
call never piles up work behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class RunnerClosedError(RuntimeError):
    """A call was submitted after :meth:`Runner.close`."""


@dataclass(slots=True)
class _Job(Generic[T]):
    call: Callable[[], T]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[T]

    def run(self) -> None:
        try:
            result = self.call()
        except Exception as exc:  # handed to the caller, in its loop
            self._settle(None, exc)
        else:
            self._settle(result, None)

    def _settle(self, result: T | None, error: Exception | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
            self.loop.call_soon_threadsafe(_settle, self.future, result, error)


def _settle(future: asyncio.Future[Any], result: object, error: Exception | None) -> None:
    if future.done():  # cancelled by its caller
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark an exception as seen: a caller that gave up on the call must not cause a warning."""
    if not future.cancelled():
        future.exception()


class Runner:
    """One daemon thread that runs the blocking calls of one check, one at a time, in order."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._queue: queue.SimpleQueue[_Job[Any] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def started(self) -> bool:
        """Whether the thread was ever started (a check that never blocks never starts one)."""
        return self._thread is not None

    def submit(self, call: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``call``; its result (or exception) arrives in the returned future.

        Cancelling the future does not stop the call (a thread cannot be interrupted): its result
        is dropped. Raises :class:`RunnerClosedError` after :meth:`close`.
        """
        if self._closed:
            raise RunnerClosedError(f"{self.name}: the runner is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieve)
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self.name, daemon=True)
            self._thread.start()
        self._queue.put(_Job(call, loop, future))
        return future

    async def run(self, call: Callable[[], T]) -> T:
        """Run ``call`` in the thread and wait for it (a cancelled wait leaves it running)."""
        return await self.submit(call)

    def close(self) -> None:
        """Let the thread end after the calls already queued. Idempotent; never waits."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(None)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            job.run()
