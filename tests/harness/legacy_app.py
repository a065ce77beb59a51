"""A fake legacy application: becomes ready after a delay, the way old servers do.

    python -m tests.harness.legacy_app --log /logs/catalina.out --ready-after 3
    python -m tests.harness.legacy_app --port 2525 --banner "220 ready" --ready-after 2
    python -m tests.harness.legacy_app --marker /run/app/ready --ready-after 2

It logs startup noise, then (after ``--ready-after`` seconds) the ready line, opens its port with a
banner, or creates its marker file. SIGUSR1 makes it log ``--fail-line`` and close its port and
remove its marker (a crash of its inner engine); SIGUSR2 makes it ready again. SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import socketserver
import threading
import time
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, for a legacy app to open."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeRedis:
    """Answers PING as Redis does: ``-LOADING`` while it loads its data set, then ``+PONG``.

    Like Redis it keeps the connection open after answering, for the next command. It listens on
    127.0.0.1:``port`` from the constructor on; ``listened_at`` is the wall-clock time taken just
    before the ``listen`` call, ``connections`` counts the connections it accepted. Threaded, so
    that synchronous tests and event loops alike can use it.
    """

    LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"

    def __init__(self, port: int, *, loading: bool = True) -> None:
        self.loading = loading
        self.connections = 0
        lock = threading.Lock()
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                with lock:
                    fake.connections += 1
                try:
                    for line in self.rfile:
                        if line.strip().upper() == b"PING":
                            self.wfile.write(fake.LOADING if fake.loading else b"+PONG\r\n")
                        else:
                            self.wfile.write(b"-ERR unknown command\r\n")
                except ConnectionError:
                    pass  # the agent aborts the connection once it has decided

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            daemon_threads = True

        self._server = Server(("127.0.0.1", port), Handler, bind_and_activate=False)
        try:
            self._server.server_bind()
            self.listened_at = time.time()
            self._server.server_activate()
        except OSError:
            self._server.server_close()
            raise
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


class App:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: asyncio.Server | None = None

    def log(self, line: str) -> None:
        if self.args.log:
            stamp = time.strftime("%d-%b-%Y %H:%M:%S")
            with Path(self.args.log).open("a") as out:
                out.write(f"{stamp} INFO [main] {line}\n")

    async def become_ready(self) -> None:
        self.log(self.args.ready_line.replace("N", str(int(self.args.ready_after * 1000))))
        if self.args.port:
            self.server = await asyncio.start_server(self._greet, "127.0.0.1", self.args.port)
        if self.args.marker:
            Path(self.args.marker).write_text("ready\n")
        print("legacy app: ready", flush=True)

    async def break_down(self) -> None:
        self.log(self.args.fail_line)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None
        if self.args.marker:
            Path(self.args.marker).unlink(missing_ok=True)
        print("legacy app: broken", flush=True)

    async def _greet(self, _: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(self.args.banner.encode() + b"\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--log")
    parser.add_argument("--port", type=int)
    parser.add_argument("--marker")
    parser.add_argument("--ready-after", type=float, default=3.0)
    parser.add_argument("--ready-line", default="Server startup in N ms")
    parser.add_argument("--fail-line", default="SEVERE: Servlet engine stopped")
    parser.add_argument("--banner", default="220 legacy-app ready")
    args = parser.parse_args()
    app = App(args)
    if args.log:
        Path(args.log).parent.mkdir(parents=True, exist_ok=True)
    app.log("Starting Servlet engine: [Apache Tomcat]")
    app.log('Initializing ProtocolHandler ["http-nio-8080"]')
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(app.break_down()))
    loop.add_signal_handler(signal.SIGUSR2, lambda: loop.create_task(app.become_ready()))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.ready_after)
    if not stop.is_set():
        await app.become_ready()
        await stop.wait()
    if app.server is not None:
        app.server.close()


if __name__ == "__main__":
    asyncio.run(main())
