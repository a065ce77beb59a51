"""Wake-ups for checks that watch one path: an inotify hint plus stat polling as the truth.

``inotify`` is bound with ctypes (``inotify_init1``, ``inotify_add_watch``, ``inotify_rm_watch``)
and its descriptor is read by the running event loop (``loop.add_reader``). The watches are on
DIRECTORIES, so that creation, deletion and rename of the file itself are seen: the directory
that really holds the file and, when the path goes through symbolic links (a link into another
directory, a ConfigMap volume's ``..data`` swap), the directory of each link, for the link's
name. When a link on the way is re-pointed, the watches are computed again for the new target.
Events for other names in those directories are ignored.

Inotify is only a hint: network volumes send no events at all. The safety net is the prober's
own periodic probe, which runs whatever the wake-ups do, so a change inotify misses is seen within
one period, as with a kubelet probe. (A queue overflow wakes.)

While the watches are not in place — inotify unavailable (``ENOSYS``, ``EMFILE``, the per-user
watch limit) or a directory does not exist yet — :class:`PathWakeups` stat-polls the path every
``interval`` seconds instead, comparing ``(st_dev, st_ino, st_size, st_mtime_ns, existence)``, and
retries adding the watches on each poll. With the watches it does not poll: at rest it costs
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sidecar.checks._runner import Runner, RunnerClosedError

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


@functools.cache
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


# --- the watches of one path --------------------------------------------------------------------

#: How many symbolic links a path may go through, as the kernel allows (``ELOOP`` beyond).
MAX_LINKS: Final = 40

#: Events that can change what a name resolves to (a link or file created, renamed, deleted).
_RELINK: Final = IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO


@dataclass(frozen=True, slots=True)
class WatchPoint:
    """A directory to watch and the names in it that matter for the path."""

    directory: Path
    names: frozenset[bytes]


def watch_points(path: Path) -> tuple[WatchPoint, ...] | None:
    """Where changes to ``path`` show up: the directory holding the file itself, and the
    directory of every symbolic link met while resolving it (a ConfigMap volume's ``..data``, a
    link into another directory), each with the names that matter. ``None`` when a directory on
    the way does not exist (there is nothing to watch yet). Blocking (``lstat``, ``readlink``)."""
    found: dict[Path, set[bytes]] = {}
    directory = Path("/")
    parts = list(path.parts[1:])
    links = 0
    while parts:
        name = parts.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            directory = directory.parent
            continue
        candidate = directory / name
        try:
            mode = os.lstat(candidate).st_mode
        except OSError:
            if parts:
                return None
            mode = None  # the file itself is missing: its directory tells when it appears
        if mode is not None and stat.S_ISLNK(mode):
            links += 1
            if links > MAX_LINKS:
                return None
            found.setdefault(directory, set()).add(os.fsencode(name))
            try:
                target = candidate.readlink()
            except OSError:
                return None
            if target.is_absolute():
                directory = Path("/")
            parts = [*target.parts[1 if target.is_absolute() else 0 :], *parts]
            continue
        if not parts:
            found.setdefault(directory, set()).add(os.fsencode(name))
            break
        directory = candidate
    return tuple(WatchPoint(d, frozenset(names)) for d, names in found.items())


#: The watch descriptors of :class:`PathWatch` and, for each, the names that matter in it.
Watches = dict[int, frozenset[bytes]]


@dataclass(frozen=True, slots=True)
class Added:
    """What :meth:`PathWatch.try_add` added: the watches and their directories."""

    watches: Watches
    directories: tuple[Path, ...]


class PathWatch:
    """inotify watches on the directories where changes to ``path`` show up (``watch_points``),
    calling ``on_wake`` for relevant events.

    Relevant: any event naming the file or a symbolic link on the way to it, any event on a
    watched directory itself (deleted, moved, attributes), and a queue overflow. Every read of
    the descriptor drains all queued events and calls ``on_wake`` at most once, so a burst costs
    one wake-up. An event that may change what the path resolves to (a link re-pointed, the file
    created, renamed or deleted, a watched directory gone) also makes the watches stale: they are
    computed and added again on the next poll, so a changed link is followed.

    Lifecycle: :meth:`open` (in the loop) creates the descriptor and registers the reader;
    :meth:`try_add` runs on the check's thread (resolving a path can block on a hung network
    volume) and returns the watches for :meth:`adopt`; :meth:`close` releases everything. Each
    step degrades silently: without a descriptor or the watches the caller keeps polling.
    """

    def __init__(self, path: Path, on_wake: Callable[[], None]) -> None:
        self._path = path
        self._on_wake = on_wake
        self._fd: int | None = None
        self._watches: Watches = {}
        self._directories: tuple[Path, ...] = ()
        self._stale = True  # the watches must be (re)computed
        self._dead: set[int] = set()  # watch descriptors the kernel already dropped
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    @property
    def active(self) -> bool:
        """Whether events can arrive for every place the path depends on."""
        return self._fd is not None and bool(self._watches) and not self._stale

    @property
    def needs_watch(self) -> bool:
        return not self._closed and self._fd is not None and not self.active

    @property
    def directories(self) -> tuple[Path, ...]:
        """The directories watched now (for tests and diagnostics)."""
        return self._directories

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
        self._stale = True
        return True

    def try_add(self) -> Added | None:
        """Watch every directory of :func:`watch_points`; ``None`` if that fails now. Runs on the
        check's thread."""
        fd = self._fd
        if fd is None:
            return None
        points = watch_points(self._path)
        if not points:
            return None
        watches: Watches = {}
        try:
            for point in points:
                wd = inotify_add_watch(fd, point.directory, WATCH_MASK)
                watches[wd] = watches.get(wd, frozenset()) | point.names
        except OSError:
            return None
        return Added(watches, tuple(point.directory for point in points))

    def adopt(self, added: Added | None) -> None:
        """Take the result of :meth:`try_add` (in the loop); drop the watches no longer needed."""
        fd = self._fd
        if added is None or fd is None or self._closed:
            return
        if self._dead.intersection(added.watches):  # a directory vanished since it was added
            return
        for wd in set(self._watches).difference(added.watches):
            with contextlib.suppress(OSError):
                inotify_rm_watch(fd, wd)
            self._dead.add(wd)
        self._watches = dict(added.watches)
        self._directories = added.directories
        self._stale = False

    def close(self) -> None:
        """Unregister the reader and close the descriptor (which drops every watch). Idempotent."""
        self._closed = True
        fd, self._fd = self._fd, None
        self._watches, self._directories = {}, ()
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
        fd, self._fd = self._fd, None
        self._watches, self._directories = {}, ()
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
            if wd in self._dead:
                continue
            if mask & (IN_IGNORED | IN_MOVE_SELF):
                # Deleted or unmounted (IGNORED), or moved: the watch follows the moved directory
                # and the path now means another one. Watch the path again on a later poll.
                if mask & IN_MOVE_SELF and self._fd is not None:
                    with contextlib.suppress(OSError):
                        inotify_rm_watch(self._fd, wd)
                self._dead.add(wd)
                self._watches.pop(wd, None)
                self._stale = True  # (the directories are renewed on the next poll)
                wake = True
                continue
            names = self._watches.get(wd)
            # A watch not adopted yet counts: the path may change right after it was added.
            if names is None or not name or name in names:
                wake = True
                if mask & _RELINK:
                    self._stale = True
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
    yield, and event-driven yields are at least :data:`MIN_GAP` apart) and, while the watches are
    not all in place, when a stat poll every ``interval`` seconds sees a different identity, size,
    mtime or existence. It does not yield at start (the prober's first probe covers the state at
    start). The stat (and adding the watches) run on ``runner`` (the check's own thread; without
    one, a runner of its own) so that a hung network volume never blocks the event loop or another
    check. Every way of losing a watch (directory deleted or moved, descriptor broken, a link on the
    way re-pointed) is itself an event, so the watches are renewed, or polling resumes, after the
    yield it causes.

    Like an async generator, it is finished by :meth:`aclose` or by a cancellation of the task
    waiting in ``__anext__``; either releases the inotify descriptor and the loop reader.
    """

    def __init__(self, path: Path, interval: float, runner: Runner | None = None) -> None:
        self._path = path
        self._interval = max(interval, 0.01)
        self._event = asyncio.Event()
        self._watch = PathWatch(path, self._event.set)
        self._own_runner = runner is None
        self._runner = runner or Runner(f"wakeups {path}")
        self._last: StatKey = None
        self._started = False
        self._closed = False
        self._last_wake = -MIN_GAP

    @property
    def watching(self) -> bool:
        """Whether inotify events are currently expected (for tests and diagnostics)."""
        return self._watch.active

    @property
    def watched_directories(self) -> tuple[Path, ...]:
        """The directories watched now (for tests and diagnostics)."""
        return self._watch.directories

    def __aiter__(self) -> PathWakeups:
        return self

    async def __anext__(self) -> None:
        if self._closed:
            raise StopAsyncIteration
        try:
            return await self._next()
        except RunnerClosedError:
            self.close()
            raise StopAsyncIteration from None
        except BaseException:
            self.close()
            raise

    async def aclose(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._watch.close()
        if self._own_runner:
            self._runner.close()
        self._event.set()  # a waiting __anext__ ends instead of waiting for an event forever

    def _poll(self, add_watch: bool) -> tuple[Added | None, StatKey]:
        """On the runner: renew the watches if needed, then stat the path."""
        watches = self._watch.try_add() if add_watch else None
        return watches, stat_key(self._path)

    async def _poll_now(self) -> StatKey:
        self._watch.open()
        add = self._watch.needs_watch
        watches, key = await self._runner.run(functools.partial(self._poll, add))
        if add:
            self._watch.adopt(watches)
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

    def __init__(self, path: Path, period: float, runner: Runner) -> None:
        self._path = path
        self._interval = min(period, self.MAX_POLL_INTERVAL)
        self._runner = runner
        self._handed_out: list[PathWakeups] = []

    def new(self) -> PathWakeups:
        iterator = PathWakeups(self._path, self._interval, self._runner)
        self._handed_out.append(iterator)
        return iterator

    def close(self) -> None:
        for iterator in self._handed_out:
            iterator.close()
        self._handed_out.clear()
