"""Each check's own thread (Runner) and name lookups on it: one check never waits for another."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.checks import _resolve
from sidecar.checks._resolve import Lookups
from sidecar.checks._runner import Runner, RunnerClosedError
from sidecar.checks.http import HttpCheck
from sidecar.checks.log import LogCheck
from sidecar.checks.tcp import TcpCheck
from sidecar.clock import SystemClock
from sidecar.model import CheckKind, CheckSpec, HttpParams, LogParams, TcpParams, Timing
from tests.unit.checks.files import append


class HungLookups:
    """``getaddrinfo`` as with a name server that never answers, until ``release()``."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []  # (host, thread name)
        self._gate = threading.Event()
        self._lock = threading.Lock()
        real = _resolve._getaddrinfo

        def hung(host: str, port: int, family: int, flags: int) -> list[_resolve.AddrInfo]:
            with self._lock:
                self.calls.append((host, threading.current_thread().name))
            if not self._gate.wait(30):
                raise AssertionError("the test never released the lookups")
            return real("127.0.0.1", port, family, flags)

        monkeypatch.setattr(_resolve, "_getaddrinfo", hung)

    def release(self) -> None:
        self._gate.set()


@pytest.fixture
def hung_lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[HungLookups]:
    lookups = HungLookups(monkeypatch)
    yield lookups
    lookups.release()


def spec(check_id: str, kind: CheckKind, params: TcpParams | HttpParams | LogParams) -> CheckSpec:
    return CheckSpec(id=check_id, kind=kind, gate=None, timing=Timing(timeout=1.0), params=params)


# --- Runner -------------------------------------------------------------------------------------


async def test_calls_run_in_order_on_one_daemon_thread_named_after_the_check() -> None:
    runner = Runner("check-APP")
    assert not runner.started  # no thread until the first call
    try:
        names = await asyncio.gather(*(runner.run(threading.current_thread) for _ in range(5)))
        assert len(set(names)) == 1
        assert names[0].name == "check-APP"
        assert names[0].daemon  # never joined at exit
    finally:
        runner.close()


async def test_an_exception_reaches_the_caller() -> None:
    runner = Runner("check-APP")

    def fail() -> None:
        raise PermissionError(13, "Permission denied")

    try:
        with pytest.raises(PermissionError):
            await runner.run(fail)
    finally:
        runner.close()


async def test_a_cancelled_wait_leaves_the_call_running_and_its_result_dropped() -> None:
    runner = Runner("check-APP")
    gate = threading.Event()
    done = threading.Event()

    def slow() -> int:
        gate.wait(10)
        done.set()
        return 1

    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(runner.run(slow), 0.05)
        gate.set()
        assert await runner.run(done.is_set)  # queued behind it, in order
    finally:
        runner.close()


async def test_after_close_no_call_is_accepted_and_the_thread_ends() -> None:
    runner = Runner("check-APP")
    thread = await runner.run(threading.current_thread)
    runner.close()
    runner.close()  # idempotent
    with pytest.raises(RunnerClosedError):
        runner.submit(lambda: None)
    await asyncio.to_thread(thread.join, 5)
    assert not thread.is_alive()


# --- name lookups -------------------------------------------------------------------------------


async def test_a_numeric_address_is_never_looked_up_on_a_thread() -> None:
    runner = Runner("check-APP")
    try:
        infos = await Lookups(runner).getaddrinfo("127.0.0.1", 80)
        assert infos[0][4] == ("127.0.0.1", 80)
        assert (await Lookups(runner).getaddrinfo("::1", 80))[0][4][:2] == ("::1", 80)
    finally:
        runner.close()
    assert not runner.started


async def test_a_hung_lookup_is_shared_by_the_probes_that_wait_for_it(
    hung_lookups: HungLookups,
) -> None:
    runner = Runner("check-APP")
    lookups = Lookups(runner)
    try:
        for _ in range(5):  # five probes time out waiting for the same name
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(lookups.getaddrinfo("db.example.invalid", 5432), 0.05)
        assert hung_lookups.calls == [("db.example.invalid", "check-APP")]
        hung_lookups.release()
        infos = await lookups.getaddrinfo("db.example.invalid", 5432)
        assert infos[0][4] == ("127.0.0.1", 5432)
        assert len(hung_lookups.calls) == 1  # the sixth probe joined the same lookup
        await lookups.getaddrinfo("db.example.invalid", 5432)
        assert len(hung_lookups.calls) == 2  # no cache: a lookup in flight is shared, no more
    finally:
        runner.close()


async def test_tcp_and_http_resolve_on_their_own_threads() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    seen: list[str] = []
    real = _resolve._getaddrinfo

    def spy(host: str, port: int, family: int, flags: int) -> list[_resolve.AddrInfo]:
        seen.append(threading.current_thread().name)
        return real(host, port, family, flags)

    tcp = TcpCheck(spec("DB", CheckKind.TCP, TcpParams(host="localhost", port=port)), SystemClock())
    web = HttpCheck(
        spec("WEB", CheckKind.HTTP, HttpParams(url=f"http://localhost:{port}/")), SystemClock()
    )
    monkey = pytest.MonkeyPatch()
    monkey.setattr(_resolve, "_getaddrinfo", spy)
    try:
        result = await tcp.probe()
        assert result.ok, result.detail
        await web.probe()  # the server hangs up (aiohttp retries once): the lookups happened
    finally:
        monkey.undo()
        await tcp.aclose()
        await web.aclose()
        server.close()
        await server.wait_closed()
    assert seen[0] == "check-DB"
    assert set(seen[1:]) == {"check-WEB"}


async def test_hung_lookups_of_many_checks_never_delay_a_log_check(
    hung_lookups: HungLookups, tmp_path: Path
) -> None:
    """More hung lookups than the loop's default executor has threads (min(32, cpus + 4))."""
    log = tmp_path / "app.log"
    append(log, "Server startup in 1 ms\n")
    params = LogParams(path=log, pattern=re.compile("Server startup"))
    healthy = LogCheck(spec("LOG", CheckKind.LOG, params), SystemClock())
    hung: list[TcpCheck | HttpCheck] = []
    for i in range(20):
        host = f"db{i}.example.invalid"
        if i % 2:
            hung.append(
                TcpCheck(spec(f"DB{i}", CheckKind.TCP, TcpParams(host=host, port=1)), SystemClock())
            )
        else:
            url = HttpParams(url=f"http://{host}/")
            hung.append(HttpCheck(spec(f"WEB{i}", CheckKind.HTTP, url), SystemClock()))
    try:
        for _ in range(3):
            for check in hung:
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(check.probe(), 0.02)
            result = await asyncio.wait_for(healthy.probe(), 5.0)  # the lookups hang for 30 s
            assert result.ok, result.detail
        assert len(hung_lookups.calls) == 20  # one per check, however many probes
        assert {name for _, name in hung_lookups.calls} == {f"check-{c.spec.id}" for c in hung}
    finally:
        hung_lookups.release()
        for check in hung:
            await check.aclose()
        await healthy.aclose()


def test_a_hung_lookup_does_not_hold_up_the_exit(tmp_path: Path) -> None:
    """``asyncio.run`` joins the default executor at exit; a check's own thread is not joined."""
    script = textwrap.dedent(
        """
        import asyncio, threading, time
        from sidecar.checks import _resolve
        from sidecar.checks.tcp import TcpCheck
        from sidecar.clock import SystemClock
        from sidecar.model import CheckKind, CheckSpec, TcpParams, Timing

        _resolve._getaddrinfo = lambda *args: threading.Event().wait(60)

        async def main():
            params = TcpParams(host="db.example.invalid", port=1)
            spec = CheckSpec(id="DB", kind=CheckKind.TCP, gate=None, timing=Timing(), params=params)
            check = TcpCheck(spec, SystemClock())
            try:
                await asyncio.wait_for(check.probe(), 0.1)
            except TimeoutError:
                pass
            await check.aclose()
            print(time.monotonic(), flush=True)

        asyncio.run(main())
        """
    )
    process = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=50, check=False
    )
    assert process.returncode == 0, process.stderr
    assert process.stdout.strip()  # it got to the end; a joined thread would hold it for 60 s
