"""Property: whatever the interleaving of writes, rotations, truncations and reads, the follower
sees exactly what a careful reader must see.

The writer
    Writes numbered lines, each ``b"NNNNNN|" + payload`` (a unique six-digit token, a payload
    without digits, newlines or carriage returns), in fragments of random size; the first fragment
    of a line holds at least its whole token. Before a truncation (``truncate``, ``copytruncate``)
    the writer finishes its current line, as a logger writing whole lines would; renames and
    deletions may happen in the middle of a line, and the rest of the line then goes to the new
    file. Writing to a missing path creates the file.

The model of what the reader must see (``Model.read``), with ``follow`` the file being read,
``pos`` how much of it was consumed and ``partial`` its unfinished last line:
    1. Without a followed file: if the path is missing, report ``missing``. Else follow the path's
       file from offset 0, after a RESET if the previous file was deleted.
    2. If the followed file was truncated while ``pos > 0``: RESET, ``pos = 0``, drop ``partial``.
       (With ``pos == 0`` nothing had been read from it: no reset, the old content is lost.)
    3. Consume the followed file to its end: every complete line, in order, cut to ``max_line``
       bytes and decoded as UTF-8 with replacement.
    4. If the path still names the followed file, or is missing while the followed file still has
       links (renamed away, new file not created yet): done.
    5. Else the followed file is finished: its unfinished last line (if any) is a line; a RESET is
       due before the next file if the followed file has no links left (deleted, replaced); follow
       nothing and go back to 1.

    So every complete line written is seen exactly once and in order, except the lines a
    truncation removed before they were read; a rename is never a reset; a deletion always is.
    (RESET marks where the read position went back to the start of a file: the follower reports
    it for diagnostics; the log check keeps its state across it, see
    ``tests/faults/test_log_check_property.py``.)

Limits of the test, which are limits of any follower that keeps one file open: between two reads
at most one "structural" change happens (a file created, renamed, truncated, replaced or deleted);
the test reads first when a second one is due. Two renames between reads would lose the middle
file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.checks import _follow
from sidecar.checks._follow import LogFollower

RESET = "<reset>"
TOKEN = 7  # len(b"NNNNNN|")


@dataclass
class ModelFile:
    data: bytearray = field(default_factory=bytearray)
    linked: bool = True
    truncated: bool = False  # truncated while the reader had consumed part of it


@dataclass
class Model:
    max_line: int
    path_file: ModelFile | None
    follow: ModelFile | None = None
    pos: int = 0
    partial: bytes = b""
    pending_reset: bool = False
    rotated: list[ModelFile] = field(default_factory=list)

    def line(self, raw: bytes) -> str:
        return raw[: self.max_line].decode("utf-8", "replace")

    def read(self) -> tuple[list[str], bool]:
        events: list[str] = []
        while True:
            if self.follow is None:
                if self.path_file is None:
                    return events, True
                self.follow, self.pos, self.partial = self.path_file, 0, b""
                self.follow.truncated = False
                if self.pending_reset:
                    events.append(RESET)
                    self.pending_reset = False
            current = self.follow
            if current.truncated:
                events.append(RESET)
                current.truncated, self.pos, self.partial = False, 0, b""
            buffer = self.partial + bytes(current.data[self.pos :])
            self.pos = len(current.data)
            *complete, self.partial = buffer.split(b"\n")
            events.extend(self.line(raw) for raw in complete)
            if self.path_file is current or (self.path_file is None and current.linked):
                return events, False
            if self.partial:
                events.append(self.line(self.partial))
            self.partial = b""
            self.pending_reset = self.pending_reset or not current.linked
            self.follow = None

    def truncate(self) -> None:
        target = self.path_file
        if target is None:
            return
        target.data.clear()
        if self.follow is target and self.pos > 0:
            target.truncated = True


@dataclass
class Writer:
    """The application: writes numbered lines in fragments to whatever file the path names."""

    path: Path
    model: Model
    number: int = 0
    line: bytes = b""  # what is left to write of the current line
    started: bool = False

    def append(self, data: bytes) -> None:
        with self.path.open("ab") as f:
            f.write(data)
        assert self.model.path_file is not None
        self.model.path_file.data += data

    def write(self, size: int, end: bool, payload: str) -> None:
        if not self.started:
            self.line = f"{self.number:06d}|{payload}".encode()
            self.number += 1
            self.started = True
            size = max(size, TOKEN)
        chunk, self.line = self.line[:size], self.line[size:]
        if end:
            chunk, self.line, self.started = chunk + self.line + b"\n", b"", False
        if chunk:
            self.append(chunk)

    def finish_line(self) -> None:
        if self.started:
            self.append(self.line + b"\n")
            self.line, self.started = b"", False


PAYLOAD = st.text(alphabet=st.sampled_from(list("abc xyz\té🚀")), max_size=24)
OPS = st.one_of(
    st.tuples(st.just("write"), st.integers(1, 40), st.booleans(), PAYLOAD),
    st.tuples(st.just("write"), st.integers(1, 40), st.booleans(), PAYLOAD),
    st.tuples(st.just("write"), st.integers(1, 40), st.booleans(), PAYLOAD),
    st.sampled_from(
        [
            ("read",),
            ("read",),
            ("rename",),
            ("rename_without_create",),
            ("delete_rotated",),
            ("copytruncate",),
            ("truncate",),
            ("delete_and_recreate",),
            ("delete",),
        ]
    ),
)


def real_read(follower: LogFollower) -> tuple[list[str], bool]:
    events: list[str] = []
    while True:
        batch = follower.read()
        if batch.reset:
            events.append(RESET)
        events.extend(batch.lines)
        if not batch.more:
            return events, batch.missing


@dataclass
class World:
    """The real directory and its model, changed together, one operation at a time.

    Shared with ``tests/faults/test_log_check_property.py``, which drives the real ``LogCheck``
    through the same operations.
    """

    directory: Path
    model: Model
    writer: Writer
    rotated: list[Path] = field(default_factory=list)

    @classmethod
    def create(cls, directory: Path, *, exists: bool, max_line: int) -> World:
        path = directory / "app.log"
        if exists:
            path.touch()
        model = Model(max_line=max_line, path_file=ModelFile() if exists else None)
        return cls(directory, model, Writer(path, model))

    @property
    def path(self) -> Path:
        return self.writer.path

    def structural(self, op: tuple[object, ...]) -> bool:
        """True for an operation that creates, renames, truncates, replaces or deletes a file."""
        kind = op[0]
        return kind != "read" and (kind != "write" or self.model.path_file is None)

    def apply(self, op: tuple[object, ...]) -> None:
        """Apply any operation but ``read`` to the real files and to the model."""
        kind = op[0]
        path, directory, model, writer = self.path, self.directory, self.model, self.writer
        if kind == "write":
            _, size, end, payload = op
            assert isinstance(size, int)
            assert isinstance(end, bool)
            assert isinstance(payload, str)
            if model.path_file is None:
                path.touch()
                model.path_file = ModelFile()
            writer.write(size, end, payload)
        elif model.path_file is None:
            return  # nothing to rotate, truncate or delete
        elif kind in ("rename", "rename_without_create"):
            target = directory / f"app.log.{len(self.rotated)}"
            path.rename(target)
            self.rotated.append(target)
            model.rotated.append(model.path_file)
            model.path_file = None
            if kind == "rename":
                path.touch()
                model.path_file = ModelFile()
        elif kind == "delete_rotated":
            if self.rotated:
                self.rotated.pop().unlink()
                model.rotated.pop().linked = False
        elif kind in ("copytruncate", "truncate"):
            writer.finish_line()
            if kind == "copytruncate":
                shutil.copyfile(path, directory / "app.log.copy")
            os.truncate(path, 0)
            model.truncate()
        elif kind in ("delete_and_recreate", "delete"):
            path.unlink()
            model.path_file.linked = False
            model.path_file = None
            if kind == "delete_and_recreate":
                path.touch()
                model.path_file = ModelFile()

    def finish(self) -> None:
        """The writer completes its last line, if the path exists."""
        if self.model.path_file is not None:
            self.writer.finish_line()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    exists=st.booleans(),
    max_line=st.sampled_from([8, 20, _follow.MAX_LINE]),
    sizes=st.sampled_from([(3, 11), (16, 64), (_follow.CHUNK_SIZE, _follow.BATCH_LIMIT)]),
    ops=st.lists(OPS, max_size=80),
)
def test_follower_sees_every_line_once_in_order_except_lines_lost_to_truncation(
    exists: bool,
    max_line: int,
    sizes: tuple[int, int],
    ops: list[tuple[object, ...]],
) -> None:
    chunk, budget = sizes
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(_follow, "CHUNK_SIZE", chunk),
        mock.patch.object(_follow, "BATCH_LIMIT", budget),
    ):
        world = World.create(Path(tmp), exists=exists, max_line=max_line)
        changed = False  # a structural change since the last read
        fds = sum(1 for _ in Path("/proc/self/fd").iterdir())

        with LogFollower(world.path, from_end=False, max_line=max_line) as follower:

            def read() -> None:
                nonlocal changed
                changed = False
                assert real_read(follower) == world.model.read()

            for op in ops:
                structural = world.structural(op)
                if structural and changed:
                    read()
                changed = changed or structural
                if op[0] == "read":
                    read()
                else:
                    world.apply(op)
            world.finish()
            read()
            assert sum(1 for _ in Path("/proc/self/fd").iterdir()) <= fds + 1
        assert sum(1 for _ in Path("/proc/self/fd").iterdir()) == fds
