"""Fixtures of the API-side unit tests: the fake API server, a token file, ``make_agent``."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.typing import EventDict

from sidecar.api import Credentials, KubePodApi, token_configuration
from sidecar.apihealth import ApiStatus
from sidecar.clock import SystemClock
from sidecar.config import ApiAccess, Identity
from sidecar.events import EventRecorder
from sidecar.gate import GateWriter
from sidecar.metrics import Metrics
from sidecar.model import CheckKind, CheckSpec, FileParams, GateMode, Timing
from sidecar.pod import PodObserver
from sidecar.results import Results
from tests.unit.api_rig import (
    BACKOFF_BASE,
    BACKOFF_CAP,
    GATE,
    KUBELET_CONDITIONS,
    NEW_TOKEN,
    NS,
    POD,
    TOKEN,
    UID,
    Agent,
    MakeAgent,
)
from tests.unit.fake_apiserver import FakeApiServer, make_pod


@pytest.fixture
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client trusts the environment's proxy settings; the fake server is local."""
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture
def logs() -> Iterator[list[EventDict]]:
    """Every test captures the logs, and no log may ever contain a token."""
    with structlog.testing.capture_logs() as captured:
        yield captured
    assert TOKEN not in repr(captured)
    assert NEW_TOKEN not in repr(captured)


@pytest.fixture
def pod() -> dict[str, Any]:
    """The Pod the fake server starts with; tests adjust it before the server starts."""
    return make_pod(
        namespace=NS, name=POD, uid=UID, readiness_gates=[GATE], conditions=KUBELET_CONDITIONS
    )


@pytest.fixture
async def apiserver(pod: dict[str, Any]) -> AsyncIterator[FakeApiServer]:
    server = FakeApiServer(pod)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "serviceaccount" / "token"
    path.parent.mkdir()
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
async def make_agent(apiserver: FakeApiServer, token_file: Path) -> AsyncIterator[MakeAgent]:
    made: list[KubePodApi] = []

    def make(
        *,
        condition_type: str | None = GATE,
        gates: tuple[str | None, ...] = (None,),
        uid: str | None = UID,
        resync: float = 0.0,
        events: bool = True,
        request_timeout: float = 2.0,
        backoff_base: float = BACKOFF_BASE,
        backoff_cap: float = BACKOFF_CAP,
        inactivity: float = 30.0,
    ) -> Agent:
        async def configure() -> Credentials:
            return token_configuration(apiserver.url, token_file, ca_cert=None)

        identity = Identity(pod_name=POD, namespace=NS, pod_uid=uid)
        metrics = Metrics()
        specs = [
            CheckSpec(
                id=f"APP{index}" if index else "APP",
                kind=CheckKind.FILE,
                gate=gate,
                timing=Timing(),
                params=FileParams(path=Path("/run/app/ready")),
            )
            for index, gate in enumerate(gates)
        ]
        results = Results(specs, GateMode.ALL)
        api = KubePodApi(
            ApiAccess(token_dir=token_file.parent),
            identity,
            metrics,
            configure=configure,
            request_timeout=request_timeout,
        )
        made.append(api)
        clock = SystemClock()
        status = ApiStatus(
            pod=f"{NS}/{POD}", namespace=NS, reload_credentials=api.reload_credentials
        )
        observer = PodObserver(
            api,
            status,
            identity=identity,
            clock=clock,
            rng=random.Random(8),
            metrics=metrics,
            resync=resync,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
            inactivity=inactivity,
        )
        recorder = (
            EventRecorder(
                api, identity=identity, uid=lambda: observer.uid, clock=clock, metrics=metrics
            )
            if events
            else None
        )
        writer = GateWriter(
            api,
            results,
            status,
            identity=identity,
            condition_type=condition_type,
            clock=clock,
            rng=random.Random(7),
            metrics=metrics,
            events=recorder,
            uid=lambda: observer.uid,
            reread=observer.reread,
            backoff_base=backoff_base,
            backoff_cap=backoff_cap,
        )
        observer.consumers.append(writer.observe)
        return Agent(
            apiserver, results, api, status, observer, writer, recorder, metrics,
            [s.id for s in specs],
        )  # fmt: skip

    yield make
    for api in made:
        await api.aclose()
