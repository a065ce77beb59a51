"""Wake-ups for checks that watch one path: an inotify hint plus stat polling as the truth.

``inotify`` is bound with ctypes (``inotify_init1``, ``inotify_add_watch``, ``inotify_rm_watch``)
and its descriptor is read by the running event loop (``loop.add_reader``). The watch is on the
DIRECTORY containing the path, so that creation, deletion and rename of the file itself are seen;
events for other names in that directory are ignored.

Inotify is only a hint: network volumes send no events at all, and a path reached through a
symbolic link that is re-pointed (a ConfigMap volume) changes without an event for its name. The
safety net is the prober's own periodic probe, which runs whatever the wake-ups do, so a change
inotify misses is seen within one period, as with a kubelet probe. (A queue overflow wakes.)

While there is no watch — inotify unavailable (``ENOSYS``, ``EMFILE``, the per-user watch limit)
or the directory does not exist yet — :class:`PathWakeups` stat-polls the path every ``interval``
seconds instead, comparing ``(st_dev, st_ino, st_size, st_mtime_ns, existence)``, and retries
adding the watch on each poll. With a watch it does not poll: at rest it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Final

IN_NONBLOCK: Final = os.O_NONBLOCK
IN_CLOEXEC: Final = os.O_CLOEXEC

IN_MODIFY: Final = 0x00000002
IN_ATTRIB: Final = 0x00000004
IN_CLOSE_WRITE: Final = 0x00000008
IN_MOVED_FROM: Final = 0x00000040
IN_MOVED_TO: Final = 0x00000080
IN_CREATE: Final = 0x00000100
IN_DELETE: Final = 0x00000200
IN_DELETE_SELF: Final = 0x00000400
IN_MOVE_SELF: Final = 0x00000800
IN_Q_OVERFLOW: Final = 0x00004000
IN_IGNORED: Final = 0x00008000
IN_ONLYDIR: Final = 0x01000000

#: What the directory watch asks for.
WATCH_MASK: Final = (
    IN_MODIFY
    | IN_CLOSE_WRITE
    | IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then ``len`` bytes of NUL-padded name
_READ_SIZE = 64 * 1024
#: The shortest time between two wake-ups caused by events (a busy log file is probed at most
#: this often; an isolated event still wakes at once).
MIN_GAP: Final = 0.02


# --- the binding --------------------------------------------------------------------------------


@cache
def _libc() -> ctypes.CDLL:
    # The interpreter is linked against libc: its symbols are reachable without a library search
    # (``ctypes.util.find_library`` would spawn ``ldconfig``).
    return ctypes.CDLL(None, use_errno=True)


def _fail(what: str) -> OSError:
    code = ctypes.get_errno() or errno.EIO
    return OSError(code, f"{what}: {os.strerror(code)}")


def inotify_init() -> int:
    """A new non-blocking, close-on-exec inotify descriptor; ``OSError`` when unavailable."""
    try:
        init1 = _libc().inotify_init1
    except (OSError, AttributeError) as exc:
        raise OSError(errno.ENOSYS, "inotify is not available") from exc
    init1.argtypes = [ctypes.c_int]
    init1.restype = ctypes.c_int
    fd: int = init1(IN_NONBLOCK | IN_CLOEXEC)
    if fd < 0:
        raise _fail("inotify_init1")
    return fd


def inotify_add_watch(fd: int, path: Path, mask: int) -> int:
    """Add (or update) a watch on ``path``; returns the watch descriptor."""
    add = _libc().inotify_add_watch
    add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    add.restype = ctypes.c_int
    wd: int = add(fd, os.fsencode(path), mask)
    if wd < 0:
        raise _fail(f"inotify_add_watch {path}")
    return wd


def inotify_rm_watch(fd: int, wd: int) -> None:
    rm = _libc().inotify_rm_watch
    rm.argtypes = [ctypes.c_int, ctypes.c_int]
    rm.restype = ctypes.c_int
    if rm(fd, wd) < 0:
        raise _fail("inotify_rm_watch")


# --- one directory watch ------------------------------------------------------------------------


class DirectoryWatch:
    """An inotify watch on the directory of ``path`` that calls ``on_wake`` for relevant events.

    Relevant: any event naming the file, any event on the directory itself (deleted, moved,
    attributes), and a queue overflow. Every read of the descriptor drains all queued events and
    calls ``on_wake`` at most once, so a burst costs one wake-up.

    Lifecycle: :meth:`open` (in the loop) creates the descriptor and registers the reader;
    :meth:`try_add` may run in a worker thread (adding a watch resolves a path, which can block on a
    hung network volume) and returns the watch descriptor for :meth:`set_watch`; :meth:`close`
    releases everything. Each step degrades silently: without a descriptor or a watch the caller
    keeps polling.
    """

    def __init__(self, path: Path, on_wake: Callable[[], None]) -> None:
        self._directory = path.parent
        self._name = os.fsencode(path.name)
        self._on_wake = on_wake
        self._fd: int | None = None
        self._wd: int | None = None
        self._dead: set[int] = set()  # watch descriptors the kernel already dropped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether events can arrive (descriptor open and the directory watched)."""
        return self._fd is not None and self._wd is not None

    @property
    def needs_watch(self) -> bool:
        return not self._closed and self._wd is None

    def open(self) -> bool:
        """Create the descriptor and register it with the running loop (once; retried if failed)."""
        if self._closed:
            return False
        if self._fd is not None:
            return True
        try:
            fd = inotify_init()
        except OSError:
            return False
        loop = asyncio.get_running_loop()
        try:
            loop.add_reader(fd, self._readable)
        except (OSError, NotImplementedError, RuntimeError):
            os.close(fd)
            return False
        self._fd, self._loop = fd, loop
        return True

    def try_add(self) -> int | None:
        """Add the watch on the directory; ``None`` if that fails now. Safe in a worker thread."""
        fd = self._fd
        if fd is None:
            return None
        try:
            return inotify_add_watch(fd, self._directory, WATCH_MASK)
        except OSError:
            return None

    def set_watch(self, wd: int | None) -> None:
        """Adopt the result of :meth:`try_add` (in the loop)."""
        if wd is None or self._fd is None or self._closed:
            return
        if wd in self._dead:  # the directory vanished between adding and adopting
            return
        self._wd = wd

    def close(self) -> None:
        """Unregister the reader and close the descriptor (which drops every watch). Idempotent."""
        self._closed = True
        fd, self._fd, self._wd = self._fd, None, None
        if fd is None:
            return
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        os.close(fd)

    def _readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        wake = False
        while True:
            try:
                data = os.read(fd, _READ_SIZE)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:
                # The descriptor is unusable: drop inotify, keep polling (retried on a later poll).
                self._reset_descriptor()
                wake = True
                break
            if not data:
                break
            wake = self._parse(data) or wake
        if wake:
            self._on_wake()

    def _reset_descriptor(self) -> None:
        fd, self._fd, self._wd = self._fd, None, None
        if fd is not None:
            if self._loop is not None:
                self._loop.remove_reader(fd)
            os.close(fd)

    def _parse(self, data: bytes) -> bool:
        wake = False
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0")
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                wake = True
                continue
            # Only one watch is alive at a time; its events count even before set_watch() adopted
            # it (the file may change right after the watch was added).
            if wd in self._dead:
                continue
            if mask & (IN_IGNORED | IN_MOVE_SELF):
                # Deleted or unmounted (IGNORED), or moved: the watch follows the moved directory
                # and the path now means another one. Watch the path again on a later poll.
                if mask & IN_MOVE_SELF and self._fd is not None:
                    with contextlib.suppress(OSError):
                        inotify_rm_watch(self._fd, wd)
                self._dead.add(wd)
                if wd == self._wd:
                    self._wd = None
                wake = True
            elif not name or name == self._name:
                wake = True
        return wake


# --- the iterator the checks return -------------------------------------------------------------

StatKey = tuple[int, int, int, int] | str | None


def stat_key(path: Path) -> StatKey:
    """What the poll compares: identity, size and mtime; ``None`` when missing; an error name."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, "error")
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class PathWakeups:
    """An async iterator that yields whenever ``path`` may have changed.

    It yields on relevant inotify events (coalesced: a burst between two ``__anext__`` calls is one
    yield, and event-driven yields are at least :data:`MIN_GAP` apart) and, while no watch is
    active, when a stat poll every ``interval`` seconds sees a different identity, size, mtime or
    existence. It does not yield at start (the prober's first probe covers the state at start).
    The stat (and adding the watch) run in a worker thread so that a hung network volume never
    blocks the event loop. Every way of losing the watch (directory deleted or moved, descriptor
    broken) is itself an event, so polling resumes after the yield it causes.

    Like an async generator, it is finished by :meth:`aclose` or by a cancellation of the task
    waiting in ``__anext__``; either releases the inotify descriptor and the loop reader.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self._interval = max(interval, 0.01)
        self._event = asyncio.Event()
        self._watch = DirectoryWatch(path, self._event.set)
        self._last: StatKey = None
        self._started = False
        self._closed = False
        self._last_wake = -MIN_GAP

    @property
    def watching(self) -> bool:
        """Whether inotify events are currently expected (for tests and diagnostics)."""
        return self._watch.active

    def __aiter__(self) -> PathWakeups:
        return self

    async def __anext__(self) -> None:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._next()
        except BaseException:
            self.close()
            raise

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._watch.close()
        self._event.set()  # a waiting __anext__ ends instead of waiting for an event forever

    def _poll(self, add_watch: bool) -> tuple[int | None, StatKey]:
        """In a worker thread: retry the watch if needed, then stat the path."""
        wd = self._watch.try_add() if add_watch else None
        return wd, stat_key(self._path)

    async def _poll_now(self) -> StatKey:
        self._watch.open()
        add = self._watch.needs_watch
        wd, key = await asyncio.to_thread(self._poll, add)
        if add:
            self._watch.set_watch(wd)
        return key

    async def _next(self) -> None:
        loop = asyncio.get_running_loop()
        if not self._started:
            self._started = True
            self._last = await self._poll_now()
        deadline = loop.time() + self._interval
        while True:
            if self._watch.active:
                await self._event.wait()
            elif not self._event.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._event.wait()
            if self._event.is_set():
                # Under a steady stream of writes, wake at most every MIN_GAP seconds; the events
                # arriving meanwhile fold into this wake-up.
                pause = self._last_wake + MIN_GAP - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
                self._event.clear()
                self._last = await self._poll_now()
                self._last_wake = loop.time()
                if self._closed:
                    raise StopAsyncIteration
                return
            key = await self._poll_now()
            if self._closed:
                raise StopAsyncIteration
            deadline = loop.time() + self._interval
            if key != self._last:
                self._last = key
                self._last_wake = loop.time()
                return


class FileWakeups:
    """The wake-ups of one log or file check: every iterator it handed out, closed together."""

    #: Without inotify, the stat poll never runs less often than this, whatever the check's period.
    MAX_POLL_INTERVAL = 1.0

    def __init__(self, path: Path, period: float) -> None:
        self._path = path
        self._interval = min(period, self.MAX_POLL_INTERVAL)
        self._handed_out: list[PathWakeups] = []

    def new(self) -> PathWakeups:
        iterator = PathWakeups(self._path, self._interval)
        self._handed_out.append(iterator)
        return iterator

    def close(self) -> None:
        for iterator in self._handed_out:
            iterator.close()
        self._handed_out.clear()
