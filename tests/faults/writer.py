"""A log-writing process that manipulates one log file on command, for the fault tests.

    python -m tests.faults.writer /logs/app.log

It reads one JSON command per line on stdin, performs it on the file and answers one JSON line on
stdout (``{"ok": true, ...}``, or ``{"ok": false, "error": ...}``). The agent under test follows
the same file; this process is the application (and its log rotator) that writes, rotates,
truncates, deletes and recreates it. :class:`LogWriter` drives it from a test.

Commands (``op`` and its arguments):

``write``          append ``text`` (UTF-8) or ``b64`` (arbitrary bytes)
``rotate``         rename the file to ``to`` and create an empty file at the path (rename rotation)
``rename``         rename the file to ``to`` only
``rotate_compress`` rename rotation, then the rotated file compressed to ``to``.gz and deleted
                   (logrotate's ``compress`` without ``delaycompress``); ``then`` as for truncate
``create``         create the path (empty) if it does not exist; ``mkdir``: its directory too
``truncate``       truncate the file to 0 in place; ``then``: text written right afterwards
``copytruncate``   copy the file to ``to``, then truncate it in place; ``then`` as for truncate
``delete``         unlink the path
``recreate``       unlink the path and create it again; ``then`` as for truncate
``stat``           the path's inode and size
``garbage``        append ``size`` random bytes (seeded with ``seed``)
``long_line``      append one line of ``size`` bytes holding ``text`` at its ``where`` (start/end)
``rotate_block``   ``rotations`` rename rotations to ``to``, writing ``lines`` noise lines into
                   each file and the line ``significant`` into file number ``at`` of the block.
                   Before each rotation it waits until process ``agent_pid`` holds the current
                   file open (the agent has switched to it), so that no rotation ever happens twice
                   between two reads of the agent (the documented limit of every log follower).
                   While waiting it keeps appending noise lines.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
NOISE = "INFO [http-nio-8080-exec] request {n} served in 3 ms"


class Writer:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.noise = 0

    def append(self, data: bytes) -> None:
        with self.path.open("ab") as out:
            out.write(data)

    def noise_line(self) -> None:
        self.noise += 1
        self.append((NOISE.format(n=self.noise) + "\n").encode())

    def run(self, command: Mapping[str, Any]) -> dict[str, Any]:
        op = command["op"]
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise ValueError(f"unknown op {op!r}")
        result: dict[str, Any] = handler(command)
        return result

    def _then(self, command: Mapping[str, Any]) -> None:
        if command.get("then"):
            self.append(str(command["then"]).encode())

    def op_write(self, command: Mapping[str, Any]) -> dict[str, Any]:
        if "b64" in command:
            self.append(base64.b64decode(command["b64"]))
        else:
            self.append(str(command["text"]).encode())
        return {}

    def op_rotate(self, command: Mapping[str, Any]) -> dict[str, Any]:
        self.path.rename(command["to"])
        self.path.touch()
        self._then(command)
        return {}

    def op_rotate_compress(self, command: Mapping[str, Any]) -> dict[str, Any]:
        rotated = Path(command["to"])
        self.path.rename(rotated)
        self.path.touch()
        with rotated.open("rb") as plain, gzip.open(f"{rotated}.gz", "wb") as packed:
            shutil.copyfileobj(plain, packed)
        rotated.unlink()
        self._then(command)
        return {}

    def op_rename(self, command: Mapping[str, Any]) -> dict[str, Any]:
        self.path.rename(command["to"])
        return {}

    def op_create(self, command: Mapping[str, Any]) -> dict[str, Any]:
        if command.get("mkdir"):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self._then(command)
        return self.op_stat(command)

    def op_truncate(self, command: Mapping[str, Any]) -> dict[str, Any]:
        os.truncate(self.path, 0)
        self._then(command)
        return {}

    def op_copytruncate(self, command: Mapping[str, Any]) -> dict[str, Any]:
        shutil.copyfile(self.path, command["to"])
        os.truncate(self.path, 0)
        self._then(command)
        return {}

    def op_delete(self, _: Mapping[str, Any]) -> dict[str, Any]:
        self.path.unlink()
        return {}

    def op_recreate(self, command: Mapping[str, Any]) -> dict[str, Any]:
        self.path.unlink()
        self.path.touch()
        self._then(command)
        return self.op_stat(command)

    def op_stat(self, _: Mapping[str, Any]) -> dict[str, Any]:
        st = self.path.stat()
        return {"ino": st.st_ino, "size": st.st_size}

    def op_garbage(self, command: Mapping[str, Any]) -> dict[str, Any]:
        rng = random.Random(command.get("seed", 0))
        self.append(rng.randbytes(int(command["size"])))
        return {}

    def op_long_line(self, command: Mapping[str, Any]) -> dict[str, Any]:
        text = str(command["text"]).encode()
        filler = b"x" * (int(command["size"]) - len(text))
        line = text + filler if command.get("where", "start") == "start" else filler + text
        self.append(line + b"\n")
        return {}

    def op_rotate_block(self, command: Mapping[str, Any]) -> dict[str, Any]:
        rotations = int(command["rotations"])
        at = int(command["at"])
        lines = int(command.get("lines", 2))
        agent = int(command["agent_pid"])
        timeout = float(command.get("sync_timeout", 30))
        target = Path(command["to"])
        waits: list[float] = []
        for number in range(rotations):
            for line in range(lines):
                if number == at and line == lines // 2:
                    self.append((str(command["significant"]) + "\n").encode())
                self.noise_line()
            waits.append(self._wait_until_followed(agent, timeout))
            self.path.rename(target)
            self.path.touch()
        waits.append(self._wait_until_followed(agent, timeout))
        return {"max_wait": max(waits), "total_wait": sum(waits), "noise": self.noise}

    def _wait_until_followed(self, pid: int, timeout: float) -> float:
        """Wait until process ``pid`` has the file at the path open; keep writing meanwhile."""
        started = time.monotonic()
        st = self.path.stat()
        ident = (st.st_dev, st.st_ino)
        while ident not in open_files(pid):
            if time.monotonic() - started > timeout:
                raise TimeoutError(f"process {pid} did not open {self.path} within {timeout:g} s")
            time.sleep(0.002)
            if time.monotonic() - started > 0.05:
                self.noise_line()  # lines keep coming while the rotation waits
        return time.monotonic() - started


def open_files(pid: int) -> set[tuple[int, int]]:
    """``(st_dev, st_ino)`` of every file process ``pid`` has open."""
    found: set[tuple[int, int]] = set()
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = list(Path(fd_dir).iterdir())
    except FileNotFoundError:
        raise ProcessLookupError(f"process {pid} is gone") from None
    for fd in fds:
        try:
            st = fd.stat()
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


def main() -> None:
    writer = Writer(Path(sys.argv[1]))
    for raw in sys.stdin:
        if not raw.strip():
            continue
        try:
            answer = {"ok": True, **writer.run(json.loads(raw))}
        except Exception as exc:  # reported to the test, which fails on it
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)


class LogWriter:
    """The writer process, driven from a test: ``writer.do("rotate", to=...)``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.writer", str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    def do(self, op: str, **arguments: Any) -> dict[str, Any]:
        process = self._process
        assert process.stdin is not None
        assert process.stdout is not None
        process.stdin.write(json.dumps({"op": op, **arguments}) + "\n")
        process.stdin.flush()
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"the writer process exited ({process.wait()}) during {op}")
        answer: dict[str, Any] = json.loads(line)
        if not answer.pop("ok"):
            raise RuntimeError(f"writer {op} failed: {answer['error']}")
        return answer

    def write(self, text: str) -> None:
        self.do("write", text=text)

    def write_bytes(self, data: bytes) -> None:
        self.do("write", b64=base64.b64encode(data).decode())

    def close(self) -> None:
        process = self._process
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    main()
