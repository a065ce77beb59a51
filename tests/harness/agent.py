"""Run the agent as a real subprocess, configured exactly as it would be inside a Pod.

The agent gets the Pod's identity through the environment (as the downward API sets it), the API
server through ``KUBERNETES_SERVICE_HOST``/``PORT``, and a Pod-bound token in a directory laid out
like ``/var/run/secrets/kubernetes.io/serviceaccount`` (``GATE_TOKEN_DIR``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from tests.harness.cluster import APISERVER_PORT, ControlPlane
from tests.harness.kube import wait_for
from tests.harness.tokens import TokenDir, request_token, write_token_dir
from tests.harness.workloads import AGENT_SA, PodRef

# How long an end-to-end test lets a stopped agent take to exit: far inside the default 30 s grace
# period, so SIGTERM is handled. The exit time itself is measured by tests/faults/test_sigterm.py;
# on this shared 2-core machine a probe-only agent took 1.6-2.8 s to exit at a load of 15-18.
STOP_BOUND = 5.0


def agent_env(
    pod: PodRef | None,
    token_dir: Path | None,
    extra: Mapping[str, str],
    *,
    api_port: int = APISERVER_PORT,
) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "GATE_HTTP_ADDRESS": "127.0.0.1:0",
        "PYTHONUNBUFFERED": "1",
    }
    if pod is not None:
        env |= {"POD_NAME": pod.name, "POD_NAMESPACE": pod.namespace, "POD_UID": pod.uid}
    if token_dir is not None:
        env |= {
            "KUBERNETES_SERVICE_HOST": "127.0.0.1",
            "KUBERNETES_SERVICE_PORT": str(api_port),
            "GATE_TOKEN_DIR": str(token_dir),
        }
    return env | dict(extra)


def bound_token_dir(
    plane: ControlPlane, pod: PodRef, directory: Path, service_account: str = AGENT_SA
) -> TokenDir:
    token = request_token(plane.admin, pod.namespace, service_account, pod=(pod.name, pod.uid))
    return write_token_dir(
        directory, token=token, ca_file=plane.pki.ca_cert, namespace=pod.namespace
    )


class AgentProcess:
    """``python -m sidecar`` with captured JSON logs and the address of its endpoints."""

    def __init__(
        self, env: Mapping[str, str], *, args: tuple[str, ...] = (), wrap: tuple[str, ...] = ()
    ) -> None:
        """``wrap``: a command that execs the agent's command line given after it (the same
        process, e.g. ``unshare --mount ...``), so that ``pid`` and signals are the agent's."""
        self.env = dict(env)
        self.logs: list[dict[str, Any]] = []
        self.stderr = ""
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [*wrap, sys.executable, "-m", "sidecar", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        self.base_url = ""

    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        for raw in self._process.stdout:
            try:
                entry = json.loads(raw)
            except ValueError:
                entry = {"event": "unparsed_output", "line": raw.decode(errors="replace")}
            with self._lock:
                self.logs.append(entry)
        self._process.stdout.close()

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        self.stderr = self._process.stderr.read().decode(errors="replace")
        self._process.stderr.close()

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [e for e in self.logs if e.get("event") == name]

    def wait_for_log(
        self,
        name: str,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
        timeout: float = 30,
    ) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            if self.returncode is not None:
                raise AssertionError(f"agent exited ({self.returncode}):\n{self.describe()}")
            return next((e for e in self.events(name) if where(e)), None)

        return wait_for(f"agent log {name}", found, timeout=timeout, describe=self.describe)

    def wait_started(self, timeout: float = 30) -> str:
        started = self.wait_for_log("agent_started", timeout=timeout)
        self.base_url = f"http://{started['listening'][0]}"
        return self.base_url

    def get(self, path: str, timeout: float = 5) -> tuple[int, str]:
        if not self.base_url:
            self.wait_started()
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=timeout) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        assert code == 200, body
        parsed: dict[str, Any] = json.loads(body)
        return parsed

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10) -> float:
        """Signal the agent and return how long it took to exit."""
        started = time.monotonic()
        if self._process.poll() is None:
            self._process.send_signal(sig)
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
                raise AssertionError(f"agent ignored {sig.name} for {timeout} s") from None
        elapsed = time.monotonic() - started
        for reader in self._readers:
            reader.join(5)
        return elapsed

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._process.send_signal(signal.SIGKILL)
        self._process.wait()

    def wait_exit(self, timeout: float = 10) -> int:
        code = self._process.wait(timeout)
        for reader in self._readers:
            reader.join(5)
        return code

    def describe(self) -> str:
        with self._lock:
            tail = [json.dumps(e) for e in self.logs[-30:]]
        return "agent stdout (last 30):\n" + "\n".join(tail) + f"\nagent stderr:\n{self.stderr}"
