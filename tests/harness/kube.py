"""A small synchronous Kubernetes REST client for tests: admin certificate or bearer token.

Tests use it to arrange and inspect the cluster without spawning kubectl for every read, and to
act with exactly the credential under test (an agent's bound token) when proving RBAC and
admission rules.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
JSON = dict[str, Any]

STRATEGIC = "application/strategic-merge-patch+json"
MERGE = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"


class ApiError(Exception):
    def __init__(self, status: int, body: str, method: str, path: str) -> None:
        super().__init__(f"{method} {path} -> {status}: {body[:2000]}")
        self.status = status
        self.body = body

    @property
    def message(self) -> str:
        try:
            return str(json.loads(self.body).get("message", self.body))
        except ValueError:
            return self.body


@dataclass(frozen=True, slots=True, kw_only=True)
class Credentials:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None
    token: str | None = None


class KubeClient:
    def __init__(self, server: str, credentials: Credentials, *, timeout: float = 10.0) -> None:
        self.server = server.rstrip("/")
        self.timeout = timeout
        self._token = credentials.token
        self._ssl = ssl.create_default_context(cafile=str(credentials.ca_file))
        if credentials.cert_file and credentials.key_file:
            self._ssl.load_cert_chain(str(credentials.cert_file), str(credentials.key_file))

    def with_token(self, token: str, ca_file: Path) -> KubeClient:
        return KubeClient(self.server, Credentials(ca_file=ca_file, token=token))

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        content_type: str = "application/json",
        query: Mapping[str, str] | None = None,
    ) -> JSON:
        url = self.server + path
        if query:
            url += "?" + "&".join(f"{k}={urllib.parse.quote(v)}" for k, v in query.items())
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace"), method, path) from None
        if not raw:
            return {}
        parsed: JSON = json.loads(raw)
        return parsed

    def get(self, path: str, **query: str) -> JSON:
        return self.request("GET", path, query=query or None)

    def post(self, path: str, body: object) -> JSON:
        return self.request("POST", path, body)

    def put(self, path: str, body: object) -> JSON:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: object, content_type: str = STRATEGIC) -> JSON:
        return self.request("PATCH", path, body, content_type=content_type)

    def delete(self, path: str, **query: str) -> JSON:
        return self.request("DELETE", path, query=query or None)

    def stream(self, path: str, **query: str) -> list[str]:
        """The lines of a streamed answer (a watch with ``timeoutSeconds``), once it ends."""
        url = self.server + path + "?" + urllib.parse.urlencode(query)
        req = urllib.request.Request(url)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        seconds = float(query.get("timeoutSeconds", 0)) + self.timeout
        try:
            with urllib.request.urlopen(req, timeout=seconds, context=self._ssl) as resp:
                return [line for line in resp.read().decode().splitlines() if line.strip()]
        except urllib.error.HTTPError as err:
            raise ApiError(err.code, err.read().decode(errors="replace"), "GET", path) from None

    def raw(self, path: str) -> str:
        req = urllib.request.Request(self.server + path)
        if self._token:
            req.add_header("Authorization", f"Bearer {self._token}")
        with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
            text: str = resp.read().decode()
            return text

    # --- conveniences -------------------------------------------------------------------------

    def pod(self, namespace: str, name: str) -> JSON:
        return self.get(f"/api/v1/namespaces/{namespace}/pods/{name}")

    def patch_pod_status(
        self, namespace: str, name: str, body: object, content_type: str = STRATEGIC
    ) -> JSON:
        return self.patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", body, content_type)


def condition(pod: JSON, condition_type: str) -> JSON | None:
    for cond in pod.get("status", {}).get("conditions") or []:
        if cond.get("type") == condition_type:
            found: JSON = cond
            return found
    return None


def condition_status(pod: JSON, condition_type: str) -> str | None:
    cond = condition(pod, condition_type)
    return None if cond is None else str(cond.get("status"))


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.05,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail with context."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            extra = f"\n{describe()}" if describe else ""
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}{extra}")
        time.sleep(interval)
