"""Service-account tokens bound to a Pod, laid out like a mounted ServiceAccount volume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.harness.kube import KubeClient


@dataclass(frozen=True, slots=True, kw_only=True)
class TokenDir:
    """A directory like ``/var/run/secrets/kubernetes.io/serviceaccount``."""

    path: Path
    token: str

    @property
    def ca_file(self) -> Path:
        return self.path / "ca.crt"


def request_token(
    client: KubeClient,
    namespace: str,
    service_account: str,
    *,
    pod: tuple[str, str] | None,
    seconds: int = 3600,
) -> str:
    """TokenRequest; with ``pod=(name, uid)`` the token is bound to that Pod (and dies with it)."""
    spec: dict[str, object] = {"expirationSeconds": seconds}
    if pod is not None:
        spec["boundObjectRef"] = {"kind": "Pod", "apiVersion": "v1", "name": pod[0], "uid": pod[1]}
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
    result = client.post(path, body)
    token: str = result["status"]["token"]
    return token


def write_token_dir(directory: Path, *, token: str, ca_file: Path, namespace: str) -> TokenDir:
    """Write ``token``, ``ca.crt`` and ``namespace`` atomically, like the kubelet's projection."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (
        ("token", token.encode()),
        ("ca.crt", ca_file.read_bytes()),
        ("namespace", namespace.encode()),
    ):
        partial = directory / f".{name}.partial"
        partial.write_bytes(content)
        partial.chmod(0o600)
        partial.replace(directory / name)
    return TokenDir(path=directory, token=token)
