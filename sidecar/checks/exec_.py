"""The ``exec`` check: run a command; exit status 0 means ready.

The command is run directly (``argv``, no shell) with stdin from ``/dev/null`` and stderr merged
into stdout, in a new session, so that it leads its own process group. Its output is drained to the
end (so the command never blocks on a full pipe) but only the first 4 KiB are kept; the first
non-empty line goes into the result's detail.

When the probe is cancelled (the prober's timeout), the whole process group is killed with
``SIGKILL`` (a ``sh -c 'sleep 100'`` grandchild dies too), the command is reaped and the
cancellation propagates. After a normal exit, anything the command left running in its process
group is killed too, so repeated probes never accumulate stray processes.

A command that cannot be started (not found, not executable) is a failed result, not an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from asyncio.subprocess import DEVNULL, PIPE, STDOUT

from sidecar.checks.base import timed_result
from sidecar.clock import Clock
from sidecar.model import CheckResult, CheckSpec, ExecParams, bounded

#: How much of the command's output is kept; the rest is read and discarded.
OUTPUT_CAP = 4 * 1024
_READ_CHUNK = 4 * 1024
#: How long to wait, after SIGKILL, for the command to be reaped and its output pipe to close.
KILL_GRACE = 2.0
_SHOWN_LIMIT = 80


def _show_text(text: str, limit: int = _SHOWN_LIMIT) -> str:
    """``text`` with non-printable characters escaped, cut to ``limit`` characters."""
    return bounded("".join(c if c.isprintable() else repr(c)[1:-1] for c in text), limit)


def first_line(output: bytes) -> str:
    """The first line of ``output`` that is not blank, stripped; ``""`` if there is none."""
    for line in output.decode("utf-8", errors="replace").splitlines():
        if line.strip():
            return line.strip()
    return ""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _describe_exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"killed by {name}"


class ExecCheck:
    """Probe by running a command."""

    def __init__(self, spec: CheckSpec, clock: Clock) -> None:
        if not isinstance(spec.params, ExecParams):
            raise TypeError(f"{spec.label}: expected ExecParams, got {type(spec.params).__name__}")
        if not spec.params.argv:
            raise ValueError(f"{spec.label}: argv is empty")
        self.spec = spec
        self._argv = spec.params.argv
        self._clock = clock

    def wakeups(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    def forget_before(self, started_at: float) -> None:
        return None  # every probe asks the live application

    async def probe(self) -> CheckResult:
        started = self._clock.monotonic()
        ok, detail = await self._evaluate()
        return timed_result(self._clock, started, ok, detail)

    async def _evaluate(self) -> tuple[bool, str]:
        command = _show_text(self._argv[0])
        try:
            process = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=DEVNULL,
                stdout=PIPE,
                stderr=STDOUT,
                start_new_session=True,
            )
        except FileNotFoundError:
            return False, f"command not found: {command}"
        except PermissionError:
            return False, f"permission denied: {command}"
        except OSError as exc:
            return False, f"cannot run {command}: {exc.strerror or exc}"

        try:
            assert process.stdout is not None
            output = await _drain(process.stdout, OUTPUT_CAP)
            returncode = await process.wait()
        except BaseException:  # cancelled by the prober's timeout, most likely
            await _kill_and_reap(process)
            raise
        _kill_group(process.pid)  # whatever it left running in its group

        line = first_line(output)
        summary = _describe_exit(returncode)
        detail = f"{summary}: {_show_text(line)}" if line else summary
        return returncode == 0, detail


async def _kill_and_reap(process: asyncio.subprocess.Process) -> None:
    """Kill the command's process group and wait until the command is reaped.

    ``Process.wait`` also waits for the output pipe to close. A process that left the group (its
    own ``setsid``) may keep the pipe open after the kill; the wait is then abandoned after
    ``KILL_GRACE`` seconds so the cancellation is not held up (the event loop still reaps the
    command, and closes the pipe once that process exits).
    """
    _kill_group(process.pid)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(process.wait(), KILL_GRACE)


async def _drain(stream: asyncio.StreamReader, cap: int) -> bytes:
    """Read ``stream`` to its end, keeping the first ``cap`` bytes."""
    kept = bytearray()
    while chunk := await stream.read(_READ_CHUNK):
        if len(kept) < cap:
            kept += chunk[: cap - len(kept)]
    return bytes(kept)
