"""The fake legacy applications the benchmarks drive, and the shell-loop baseline.

The benchmark itself plays the legacy application, so that "the moment the app became ready" is
known exactly: the wall-clock time (``time.time()``) taken immediately before the one system call
that makes it ready — the ``write`` of the ready line to the log (``O_APPEND``), the ``open`` that
creates the marker file, the ``listen`` on the port (the banner, or the HTTP reply, is served from
this process's event loop, as a small asyncio server).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Protocol

from tests.harness.cluster import APISERVER_PORT
from tests.harness.workloads import GATE, PodRef

READY_LINE = "INFO [main] org.apache.catalina.startup.Catalina.start Server startup in 1234 ms\n"
FAIL_LINE = "SEVERE [main] org.apache.catalina.core.StandardServer Servlet engine stopped\n"
NOISE = (
    "INFO [main] org.apache.catalina.startup.VersionLoggerListener Server version: Apache Tomcat\n"
    'INFO [main] org.apache.coyote.AbstractProtocol.init Initializing ProtocolHandler ["http"]\n'
    "INFO [main] org.apache.catalina.core.StandardService Starting service [Catalina]\n"
)
PATTERN = r"Server startup in \d+ ms"
FAIL_PATTERN = r"SEVERE|Shutting down"
GREP_PATTERN = "Server startup in [0-9]+ ms"  # the same, as a POSIX ERE
BANNER = b"220 legacy-app ready\r\n"
EXPECT = "^220 "
HTTP_PATH = "/health"
KINDS = ("log", "file", "tcp", "http")


class App(Protocol):
    kind: str

    def check_env(self) -> dict[str, str]:
        """The agent's ``CHECK_APP_*`` variables for this application."""
        ...

    def shell_test(self) -> str:
        """The shell condition of the shell-loop baseline (``grep -q ...``)."""
        ...

    async def prepare(self) -> None:
        """The not-ready state the benchmark starts from."""
        ...

    async def make_ready(self) -> float:
        """Become ready; returns the wall-clock time just before the decisive system call."""
        ...

    async def make_unready(self, *, restart: bool) -> None:
        """Stop being ready (``restart``: as a restart would look, for the shell loop's grep)."""
        ...

    async def close(self) -> None: ...


class LogApp:
    kind = "log"

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_env(self) -> dict[str, str]:
        return {
            "CHECK_APP_KIND": "log",
            "CHECK_APP_PATH": str(self.path),
            "CHECK_APP_PATTERN": PATTERN,
            "CHECK_APP_FAIL_PATTERN": FAIL_PATTERN,
        }

    def shell_test(self) -> str:
        return f"grep -qE '{GREP_PATTERN}' {self.path}"

    async def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(NOISE)

    def _append(self, line: str) -> float:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            at = time.time()
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        return at

    async def make_ready(self) -> float:
        return self._append(READY_LINE)

    async def make_unready(self, *, restart: bool) -> None:
        if restart:  # the shell loop's grep reads the whole file: start a fresh log
            self.path.write_text(NOISE)
        else:
            self._append(FAIL_LINE)

    async def close(self) -> None:
        return None


class FileApp:
    kind = "file"

    def __init__(self, path: Path) -> None:
        self.path = path

    def check_env(self) -> dict[str, str]:
        return {"CHECK_APP_KIND": "file", "CHECK_APP_PATH": str(self.path)}

    def shell_test(self) -> str:
        return f"test -e {self.path}"

    async def prepare(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)

    async def make_ready(self) -> float:
        at = time.time()
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b"ready\n")
        finally:
            os.close(fd)
        return at

    async def make_unready(self, *, restart: bool) -> None:
        self.path.unlink(missing_ok=True)

    async def close(self) -> None:
        self.path.unlink(missing_ok=True)


class TcpApp:
    """A banner server (SMTP-like) on 127.0.0.1:``port``, opened and closed on demand.

    ``connections`` counts the connections it accepted.
    """

    kind = "tcp"

    def __init__(self, port: int) -> None:
        self.port = port
        self._server: asyncio.Server | None = None
        self.connections = 0

    def check_env(self) -> dict[str, str]:
        return {
            "CHECK_APP_KIND": "tcp",
            "CHECK_APP_ADDRESS": f"127.0.0.1:{self.port}",
            "CHECK_APP_EXPECT": EXPECT,
        }

    def shell_test(self) -> str:
        return (
            f"{{ read -t 1 -r banner </dev/tcp/127.0.0.1/{self.port}; }} 2>/dev/null"
            ' && [ "${banner#220 }" != "$banner" ]'
        )

    async def prepare(self) -> None:
        await self.make_unready(restart=False)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(ConnectionError):
            await self._serve(reader, writer)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _serve(self, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(BANNER)
        await writer.drain()

    async def make_ready(self) -> float:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.setblocking(False)
        at = time.time()
        sock.listen(128)
        self._server = await asyncio.start_server(self._accept, sock=sock)
        return at

    async def make_unready(self, *, restart: bool) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def close(self) -> None:
        await self.make_unready(restart=False)


class HttpApp(TcpApp):
    """An HTTP server on 127.0.0.1:``port`` answering every GET with ``status`` (200: ready)."""

    kind = "http"

    def __init__(self, port: int, status: int = 200) -> None:
        super().__init__(port)
        self.status = status

    def check_env(self) -> dict[str, str]:
        return {"CHECK_APP_KIND": "http", "CHECK_APP_URL": self.url}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{HTTP_PATH}"

    def shell_test(self) -> str:
        return f"curl -sf -o /dev/null --max-time 1 {self.url}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await reader.readuntil(b"\r\n\r\n")
        body = b"ok\n" if self.status < 400 else b"starting\n"
        writer.write(
            f"HTTP/1.1 {self.status} {'OK' if self.status < 400 else 'Service Unavailable'}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()


# --- the shell-loop baseline --------------------------------------------------------------------


def shell_loop_script(app: App, pod: PodRef, token_dir: Path, condition_type: str = GATE) -> str:
    """The classic readiness-gate loop from blog posts: test, PATCH True with curl, sleep 1."""
    body = '{"status":{"conditions":[{"type":"' + condition_type + '","status":"True"}]}}'
    url = (
        f"https://127.0.0.1:{APISERVER_PORT}/api/v1/namespaces/{pod.namespace}/pods/{pod.name}"
        "/status"
    )
    return (
        "while true; do\n"
        f"  {app.shell_test()} && curl -sk -o /dev/null -X PATCH"
        " -H 'Content-Type: application/strategic-merge-patch+json'"
        f' -H "Authorization: Bearer $(cat {token_dir}/token)"'
        f" --data '{body}' {url}\n"
        "  sleep 1\n"
        "done\n"
    )


class ShellLoop:
    """``bash -c <the loop>`` in its own process group."""

    def __init__(self, script: str) -> None:
        self.script = script
        self.process = subprocess.Popen(
            ["bash", "-c", script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
