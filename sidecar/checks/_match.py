"""Finding the last line of a block of text that a regular expression matches, fast.

Used by the log check on each batch of lines its source returns; pure computation, no I/O (big
batches are matched on the check's own thread, off the event loop).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from sidecar.model import bounded

#: How much of a matching line is kept (for ``/status`` and tests).
LINE_LIMIT = 200

#: Constructs that may look past a line's end, so a block search could disagree with a line search.
_LINE_ONLY = re.compile(r"\(\?<?[=!]|\\[AZ]")
_WINDOW = 64 * 1024


class LinePattern:
    """Find the last line of a text block that ``pattern.search(line)`` matches, fast.

    The block is searched with a MULTILINE copy of the pattern in C, from the end backwards in
    growing windows; each hit is mapped back to its line and confirmed with the original pattern on
    that line. A hit that spans a newline (``\\s``, ``[^x]``, DOTALL) makes the rest of that window
    fall back to matching line by line. Patterns with lookarounds or ``\\A``/``\\Z`` are always
    matched line by line.
    """

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self._block = re.compile(pattern.pattern, pattern.flags | re.MULTILINE)
        self._per_line = _LINE_ONLY.search(pattern.pattern) is not None

    def last_line(self, text: str, start: int = 0) -> tuple[int, int] | None:
        """``(line_start, line_end)`` of the last matching line of ``text[start:]``, or ``None``.

        ``text`` is made of lines ending with ``"\\n"`` and ``start`` is the start of a line;
        ``line_end`` is the index of the line's newline.
        """
        end = len(text)
        size = _WINDOW
        while end > start:
            window = max(start, end - size)
            if window > start:
                newline = text.rfind("\n", start, window)
                window = newline + 1 if newline >= 0 else start
            found = self._last_in(text, window, end)
            if found is not None:
                return found
            end = window
            size *= 4
        return None

    def _last_in(self, text: str, start: int, end: int) -> tuple[int, int] | None:
        if self._per_line:
            return self._last_line_by_line(text, start, end)
        last: tuple[int, int] | None = None
        pos = start
        search = self._block.search
        while pos < end:
            match = search(text, pos, end)
            if match is None or match.start() >= end:
                break
            at = match.start()
            line_start = text.rfind("\n", 0, at) + 1
            line_end = text.find("\n", at)
            if line_end < 0:
                line_end = len(text)
            if match.end() <= line_end and self.pattern.search(text[line_start:line_end]):
                last = (line_start, line_end)
                pos = line_end + 1
                continue
            found = self._last_line_by_line(text, line_start, end)
            return found if found is not None else last
        return last

    def _last_line_by_line(self, text: str, start: int, end: int) -> tuple[int, int] | None:
        if start >= end:
            return None
        search = self.pattern.search
        line_end = end - 1 if text[end - 1] == "\n" else end  # where the last line ends
        while line_end >= start:
            newline = text.rfind("\n", start, line_end)
            line_start = newline + 1 if newline >= 0 else start
            if search(text[line_start:line_end]):
                return (line_start, line_end)
            line_end = line_start - 1
        return None


class MatchKind(StrEnum):
    READY = "ready"
    FAIL = "fail"


@dataclass(frozen=True, slots=True, kw_only=True)
class Found:
    """What a block of lines says. ``kind``/``line``: its last match (``None``: no match after the
    last start line), which begins at index ``offset`` of the block; ``restarted``: it holds a
    start line, so evidence before it is forgotten."""

    kind: MatchKind | None
    line: str = ""
    offset: int = 0
    restarted: bool = False


class Scanner:
    """The log check's reading of a block of lines: start, fail and ready patterns together.

    Per line: a start line forgets what came before it; then the line's own verdict counts (so a
    line matching the start pattern and the ready pattern is a ready line, and one matching the
    start and the fail pattern a fail line); the fail pattern wins over the ready pattern on the
    same line; the latest verdict wins.
    """

    def __init__(
        self,
        ready: re.Pattern[str],
        fail: re.Pattern[str] | None = None,
        start: re.Pattern[str] | None = None,
    ) -> None:
        self._ready = LinePattern(ready)
        self._fail = None if fail is None else LinePattern(fail)
        self._start = None if start is None else LinePattern(start)

    def scan(self, text: str) -> Found | None:
        """The block's last word on the state; ``None`` when it changes nothing."""
        start = None if self._start is None else self._start.last_line(text)
        origin = 0 if start is None else start[0]
        fail = None if self._fail is None else self._fail.last_line(text, origin)
        ready = self._ready.last_line(text, origin if fail is None else fail[1] + 1)
        if ready is not None:
            kind, (begin, end) = MatchKind.READY, ready
        elif fail is not None:
            kind, (begin, end) = MatchKind.FAIL, fail
        elif start is not None:
            return Found(kind=None, restarted=True)
        else:
            return None
        line = bounded(text[begin:end], LINE_LIMIT)
        return Found(kind=kind, line=line, offset=begin, restarted=start is not None)
