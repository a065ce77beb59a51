"""LinePattern and Scanner: the last matching line of a block, and what a block says."""

from __future__ import annotations

import re

from sidecar.checks._match import Found, LinePattern, MatchKind, Scanner

# --- LinePattern --------------------------------------------------------------------------------


def block(*lines: str) -> str:
    return "".join(line + "\n" for line in lines)


def last(pattern: str, text: str, start: int = 0) -> str | None:
    found = LinePattern(re.compile(pattern)).last_line(text, start)
    return None if found is None else text[found[0] : found[1]]


def test_line_pattern_finds_the_last_matching_line() -> None:
    text = block("ready 1", "noise", "ready 2", "noise")
    assert last("ready", text) == "ready 2"
    assert last("absent", text) is None
    assert last("x", "") is None


def test_line_pattern_anchors_apply_to_each_line() -> None:
    text = block("xx started", "started here", "also started")
    assert last("^started", text) == "started here"
    assert last("started$", text) == "also started"
    assert last("^started$", text) is None
    assert last("^$", block("a", "", "b")) == ""


def test_line_pattern_never_matches_across_a_newline() -> None:
    text = block("Server", "startup in 5 ms", "tail")
    assert last(r"Server\s+startup", text) is None
    assert last(r"Server[^x]*startup", text) is None
    assert last(r"(?s)Server.*startup", text) is None
    # a spanning block hit falls back to line-by-line and still finds later real matches
    text = block("a", "b", "ab x", "c")
    assert last(r"a\s*b", text) == "ab x"


def test_line_pattern_with_lookarounds_and_string_anchors_is_matched_per_line() -> None:
    text = block("done ok", "done", "other")
    assert last(r"done(?!\s)", text) == "done"
    assert last(r"\Adone\Z", text) == "done"
    assert last(r"(?<=done )ok", text) == "done ok"


def test_line_pattern_respects_the_start_offset() -> None:
    text = block("ready", "fail", "noise")
    assert last("ready", text, start=len("ready\n")) is None
    assert last("noise", text, start=len("ready\n")) == "noise"


def test_line_pattern_finds_an_early_match_in_a_large_block() -> None:
    lines = ["ready at the start"] + [f"noise {i}" for i in range(100_000)]
    text = block(*lines)
    assert last("ready", text) == "ready at the start"
    assert last("noise 5$", text) == "noise 5"
    assert last("^noise", text) == "noise 99999"


def test_line_pattern_agrees_with_a_per_line_search_on_awkward_patterns() -> None:
    lines = ["", "a", "ab", " b", "b a", "aaa", "x\ty", "a b", "\x0bvt", "end"]
    text = block(*lines)
    for pattern in [
        r"a",
        r"^a",
        r"b$",
        r"a\s",
        r"\s",
        r"\s*",
        r"a|^b",
        r"\bb",
        r"(a)\1",
        r"$",
        r".",
    ]:
        compiled = re.compile(pattern)
        expected = next((line for line in reversed(lines) if compiled.search(line)), None)
        assert last(pattern, text) == expected, pattern


# --- Scanner ------------------------------------------------------------------------------------


def scanner(start: str | None = "STARTING") -> Scanner:
    return Scanner(
        re.compile("READY"), re.compile("FAIL"), None if start is None else re.compile(start)
    )


def test_scanner_says_nothing_about_a_block_without_matches() -> None:
    assert scanner().scan(block("noise", "more noise")) is None


def test_scanner_reports_the_latest_verdict_its_line_and_where_the_line_begins() -> None:
    assert scanner().scan(block("READY 1", "FAIL 2", "noise")) == Found(
        kind=MatchKind.FAIL, line="FAIL 2", offset=8
    )
    assert scanner().scan(block("FAIL 1", "READY 2")) == Found(
        kind=MatchKind.READY, line="READY 2", offset=7
    )


def test_fail_wins_over_ready_on_one_line() -> None:
    assert scanner().scan(block("READY and FAIL")) == Found(
        kind=MatchKind.FAIL, line="READY and FAIL"
    )


def test_a_start_line_forgets_what_came_before_it() -> None:
    assert scanner().scan(block("READY", "STARTING again", "noise")) == Found(
        kind=None, restarted=True
    )
    assert scanner().scan(block("FAIL", "STARTING", "READY now")) == Found(
        kind=MatchKind.READY, line="READY now", offset=14, restarted=True
    )


def test_only_the_latest_start_line_counts() -> None:
    text = block("STARTING 1", "READY 1", "STARTING 2", "noise")
    assert scanner().scan(text) == Found(kind=None, restarted=True)


def test_a_line_matching_start_and_a_verdict_counts_as_the_verdict() -> None:
    assert scanner().scan(block("FAIL", "STARTING READY")) == Found(
        kind=MatchKind.READY, line="STARTING READY", offset=5, restarted=True
    )
    assert scanner().scan(block("READY", "STARTING READY FAIL")) == Found(
        kind=MatchKind.FAIL, line="STARTING READY FAIL", offset=6, restarted=True
    )


def test_without_a_start_pattern_nothing_is_ever_forgotten() -> None:
    assert scanner(None).scan(block("READY", "STARTING again")) == Found(
        kind=MatchKind.READY, line="READY"
    )


def test_a_scanned_line_is_bounded() -> None:
    found = scanner().scan(block("READY " + "x" * 1000))
    assert found is not None
    assert len(found.line) <= 200
