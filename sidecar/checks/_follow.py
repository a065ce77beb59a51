"""Following a log file the way mature log shippers do (synchronous core, no asyncio).

:class:`LogFollower` reads everything new in a file and returns it as a block of complete lines.
Every way a file can be rotated is followed; none of them is an application event (the log check
keeps its state across all of them, as Vector and Fluent Bit do). The
batches still say where the read position went back to the start of a file (``reset``), for
diagnostics.

Identity
    The open file is identified by ``(st_dev, st_ino)`` plus a fingerprint: its first bytes (up to
    :data:`FINGERPRINT_SIZE`, fewer while the file is shorter; the fingerprint grows with the file).

Truncation (in place, ``copytruncate``)
    Detected when the size is below our offset OR the first bytes changed. Size alone misses a
    ``copytruncate`` when the file regrows past the old offset between two reads; the fingerprint
    catches it unless the new content starts with exactly the same bytes. The file is then read
    again from offset 0 with ``reset=True``; the unfinished line we had buffered is dropped.

Replacement (the path names another inode)
    The old handle is drained to its end first (its unfinished last line, if any, is emitted as a
    line: that content is final), then the new file is read from offset 0.

    - Rename-and-create rotation: the old inode still has links (``st_nlink > 0``): ``reset=False``.
      While the path is missing after the rename, the old handle keeps being followed.
    - Delete and recreate, a rename over the path, or a rename followed by the deletion of the
      rotated file (logrotate's ``compress`` without ``delaycompress``): the old inode has no links
      left (``st_nlink == 0``); the new file comes with ``reset=True``. If the path is missing, the
      batch says ``missing=True`` and the next file that appears is read from 0 with
      ``reset=True``.
    - A symbolic link at the path that now points elsewhere is a replacement like the others.

    A batch never mixes lines from before and after a reset: the old file's last lines are returned
    with ``more=True`` and the next call returns the new file's lines with ``reset=True``.

Missing file or directory
    ``missing=True`` and no error; the file is followed from offset 0 once it appears. ``from_end``
    skips only what existed when the file was opened for the first time, and only if it existed at
    our first read: a file created later is entirely new content.

Content that was already there
    What the first file held when it was opened for the first time (when it existed at our first
    read) was written at the latest at that moment's modification time: batches of it carry that
    time as ``written_before`` (a batch never mixes such content with newer content). Every other
    batch says ``written_before=None``: its lines were written at the latest when they were read.

Lines
    Split on ``\\n`` (a ``\\r\\n`` ending loses its ``\\r``), decoded as UTF-8 with
    ``errors="replace"``. An unfinished last line stays buffered until its newline arrives. A line
    longer than ``max_line`` bytes keeps its first ``max_line`` bytes; the rest up to the newline is
    discarded without being held in memory.

Work per call
    Reads in :data:`CHUNK_SIZE` chunks and at most :data:`BATCH_LIMIT` bytes per call; ``more=True``
    tells the caller to call again (there is more to read now). :attr:`LogFollower.position` and
    :attr:`LogFollower.size` say how far a catch-up has come.

Not covered (as with other shippers): two rotations between two reads lose the middle file;
lines the writer appends to a rotated file after we switched to the new one are not read; lines
written between our last read and a ``copytruncate`` are lost with the copy; a truncation
followed by new content that starts with exactly the old first bytes and grows past the old
offset is read as a continuation.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

FINGERPRINT_SIZE: Final = 256
CHUNK_SIZE: Final = 1024 * 1024
#: Small batches cost no throughput and bound the memory of a big scan: a batch is held ~5 times
#: over (read chunks, joined bytes, text, the previous batch), 1 MiB -> ~6 MiB, 8 MiB -> ~40 MiB.
BATCH_LIMIT: Final = 1024 * 1024
MAX_LINE: Final = 64 * 1024

_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0)


@dataclass(frozen=True, slots=True)
class FollowBatch:
    """What one :meth:`LogFollower.read` found.

    ``text`` holds complete lines, each terminated by ``"\\n"`` (``""`` when there are none).
    ``reset``: the read position went back to the start of a file (truncated or replaced) before
    these lines; a rotation, for diagnostics. ``missing``: after these lines, the path does not
    exist. ``more``: call again, there is more. ``written_before``: every line was written at the
    latest at this wall-clock time (the file's modification time when the agent first opened it),
    or ``None`` when the lines are new (written at the latest when read).
    """

    text: str = ""
    reset: bool = False
    missing: bool = False
    more: bool = False
    written_before: float | None = None

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")[:-1] if self.text else []


class LogFollower:
    """Follow ``path`` across rotations, truncations and replacements. Not thread-safe."""

    def __init__(self, path: Path, *, from_end: bool, max_line: int = MAX_LINE) -> None:
        if max_line < 1:
            raise ValueError(f"max_line must be positive, got {max_line}")
        self.path = path
        self._from_end = from_end
        self._max_line = max_line
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None  # the file we follow (kept across close())
        self._offset = 0  # bytes consumed, including the buffered unfinished line
        self._fingerprint = b""
        self._partial = bytearray()  # the unfinished last line, at most max_line bytes
        self._discard = False  # dropping bytes until the next newline
        self._discard_emit = False  # ... then emit the buffered (cut) line
        self._opened_once = False
        self._seen_missing = False
        self._pending_reset = False
        self._budget = 0
        self._size = 0  # the open file's size at the last look
        # What the first file held when first opened, and its modification time then.
        self._preexisting_end = 0
        self._preexisting_mtime = 0.0

    @property
    def is_open(self) -> bool:
        return self._fd is not None

    @property
    def position(self) -> int:
        """Bytes of the followed file consumed so far (read by other threads for progress)."""
        return self._offset

    @property
    def size(self) -> int:
        """The followed file's size when last looked at."""
        return self._size

    def close(self) -> None:
        """Release the descriptor. A later :meth:`read` reopens the path and resumes where it was if
        it is still the same file (same identity and first bytes), else starts over with a reset."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def read(self) -> FollowBatch:
        """Read what is new. Raises ``OSError`` only for errors other than a missing file."""
        self._budget = BATCH_LIMIT
        out: list[bytes] = []
        reset = missing = more = False
        written_before: float | None = None
        while True:
            if self._fd is None and not self._open():
                missing = True
                break
            if self._pending_reset:
                if out:  # the previous file's lines come first, in a batch of their own
                    more = True
                    break
                self._pending_reset = False
                reset = True
            if self._check_truncated():
                if out:
                    self._pending_reset = True
                    more = True
                    break
                reset = True
            if self._offset < self._preexisting_end:
                # old content, in batches of its own: they end where it ends
                written_before = self._preexisting_mtime
                self._budget = min(self._budget, self._preexisting_end - self._offset)
            if self._read_available(out):
                more = written_before is None or self._has_more()
                break
            outcome = self._check_replaced(out)
            if outcome == "switched" and written_before is not None:
                outcome = "more"  # the next file's lines are not old content: a batch of their own
            if outcome != "switched":  # else the next iteration opens the new file
                more = outcome == "more"
                missing = outcome == "missing"
                break
        batch = self._batch(out, reset=reset, missing=missing, more=more)
        if written_before is None or not batch.text:
            return batch
        return dataclasses.replace(batch, written_before=written_before)

    # --- opening and identity -------------------------------------------------------------------

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            self._seen_missing = True
            return False
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        if stat.S_ISDIR(st.st_mode):
            os.close(fd)
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(self.path))
        self._fd = fd
        ident = (st.st_dev, st.st_ino)
        if self._ident == ident:
            return True  # reopened after close(): _check_truncated() validates the position
        if self._ident is not None:
            self._pending_reset = True  # replaced while we held no descriptor
        first = not self._opened_once
        self._opened_once = True
        self._ident = ident
        self._clear_line_state()
        self._offset = 0
        self._fingerprint = b""
        self._preexisting_end = 0
        if first and not self._seen_missing:
            if self._from_end:
                self._skip_to_end(fd, st.st_size)
            else:
                self._preexisting_end, self._preexisting_mtime = st.st_size, st.st_mtime
        return True

    def _skip_to_end(self, fd: int, size: int) -> None:
        self._offset = size
        self._fingerprint = os.pread(fd, min(FINGERPRINT_SIZE, size), 0)
        if size > 0 and os.pread(fd, 1, size - 1) != b"\n":
            self._discard, self._discard_emit = True, False  # skip the rest of the last line

    def _check_truncated(self) -> bool:
        """True (and the position reset to 0) if the open file shrank or its first bytes changed."""
        fd = self._fd
        assert fd is not None
        size = self._size = os.fstat(fd).st_size
        known = len(self._fingerprint)
        truncated = size < self._offset or size < known
        if not truncated and size > 0:
            head = os.pread(fd, min(FINGERPRINT_SIZE, size), 0)
            if head[:known] != self._fingerprint or len(head) < known:
                truncated = True
            elif len(head) > known:
                self._fingerprint = head
        if truncated:
            self._offset = 0
            self._fingerprint = b""
            self._preexisting_end = 0
            self._clear_line_state()
        return truncated

    def _has_more(self) -> bool:
        fd = self._fd
        assert fd is not None
        self._size = os.fstat(fd).st_size
        return self._size > self._offset

    def _check_replaced(self, out: list[bytes]) -> str:
        """At the end of the open file: has the path moved on to another file?"""
        fd = self._fd
        assert fd is not None
        try:
            st = self.path.stat()
        except (FileNotFoundError, NotADirectoryError):
            now: tuple[int, int] | None = None
        else:
            now = (st.st_dev, st.st_ino)
        if now == self._ident:
            return "same"
        old_links = os.fstat(fd).st_nlink
        if now is None and old_links > 0:
            return "same"  # renamed away, nothing new yet: keep following the old file
        # Drain what was appended to the old file up to now, then leave it for good.
        if self._read_available(out):
            return "more"
        if self._partial or self._discard_emit:
            out.append(bytes(self._partial) + b"\n")
        self.close()
        self._ident = None
        self._offset = 0
        self._fingerprint = b""
        self._preexisting_end = 0
        self._clear_line_state()
        if old_links == 0:
            self._pending_reset = True
        if now is None:
            self._seen_missing = True
            return "missing"
        return "switched"

    # --- reading and splitting ------------------------------------------------------------------

    def _read_available(self, out: list[bytes]) -> bool:
        """Read to the end of the open file; True if the budget ran out first."""
        fd = self._fd
        assert fd is not None
        while self._budget > 0:
            data = os.pread(fd, min(CHUNK_SIZE, self._budget), self._offset)
            if not data:
                return False
            known = len(self._fingerprint)
            if known < FINGERPRINT_SIZE and self._offset <= known < self._offset + len(data):
                # the fingerprint always covers what was consumed (up to its size)
                self._fingerprint += data[known - self._offset : FINGERPRINT_SIZE - self._offset]
            self._offset += len(data)
            self._budget -= len(data)
            self._feed(data, out)
        return True

    def _clear_line_state(self) -> None:
        self._partial.clear()
        self._discard = False
        self._discard_emit = False

    def _feed(self, data: bytes, out: list[bytes]) -> None:
        if self._discard:
            end = data.find(b"\n")
            if end < 0:
                return
            if self._discard_emit:
                out.append(bytes(self._partial) + b"\n")
            self._clear_line_state()
            data = data[end + 1 :]
        last = data.rfind(b"\n")
        if last < 0:
            self._keep_partial(data)
            return
        start = 0
        if self._partial:
            first = data.find(b"\n")
            room = self._max_line - len(self._partial)
            out.append(bytes(self._partial) + data[: min(first, room)] + b"\n")
            self._partial.clear()
            start = first + 1
        if start <= last:
            out.append(self._cap_lines(data, start, last + 1))
        self._keep_partial(data[last + 1 :])

    def _keep_partial(self, data: bytes) -> None:
        room = self._max_line - len(self._partial)
        if len(data) > room:
            self._partial += data[:room]
            self._discard, self._discard_emit = True, True
        else:
            self._partial += data

    def _cap_lines(self, data: bytes, start: int, end: int) -> bytes:
        """``data[start:end]`` (complete lines) with each line cut to ``max_line`` bytes."""
        limit = self._max_line
        if end - start <= limit + 1:
            return data[start:end]
        pieces: list[bytes] = []
        kept = pos = start
        while end - pos > limit + 1:
            newline = data.rfind(b"\n", pos, pos + limit + 1)
            if newline >= 0:
                pos = newline + 1
                continue
            # the line starting at pos is too long: keep its head, skip to its newline
            pieces.append(data[kept : pos + limit])
            pieces.append(b"\n")
            pos = kept = data.find(b"\n", pos + limit) + 1
        pieces.append(data[kept:end])
        return b"".join(pieces)

    def _batch(
        self, out: list[bytes], *, reset: bool, missing: bool = False, more: bool = False
    ) -> FollowBatch:
        text = b"".join(out).decode("utf-8", "replace") if out else ""
        if "\r" in text:
            text = text.replace("\r\n", "\n")
        return FollowBatch(text=text, reset=reset, missing=missing, more=more)


# --- errors ---------------------------------------------------------------------------------


def describe_read_error(path: Path, exc: OSError) -> str:
    """A short, stable description of why ``path`` could not be read."""
    if isinstance(exc, PermissionError):
        return f"permission denied reading {path}"
    if isinstance(exc, IsADirectoryError):
        return f"{path} is a directory"
    return f"cannot read {path}: {exc.strerror or exc}"
