"""Certificates, keys and kubeconfigs for a throw-away control plane, made with the openssl CLI."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
_APISERVER_SANS = (
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
    "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClientCert:
    cert: Path
    key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(path))
    path.chmod(0o600)


class Pki:
    """A CA plus the serving, client and service-account keys the components need."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.ca_cert = directory / "ca.crt"
        self.ca_key = directory / "ca.key"
        self.sa_key = directory / "sa.key"
        self.sa_pub = directory / "sa.pub"
        _ec_key(self.ca_key)
        _openssl(
            "req", "-x509", "-new", "-key", str(self.ca_key), "-days", "2", "-subj",
            "/CN=readiness-gate-sidecar-test-ca", "-out", str(self.ca_cert),
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
        )  # fmt: skip
        _ec_key(self.sa_key)
        _openssl("ec", "-in", str(self.sa_key), "-pubout", "-out", str(self.sa_pub))
        self.apiserver = self.issue("apiserver", "/CN=kube-apiserver", server_sans=_APISERVER_SANS)

    def issue(self, name: str, subject: str, *, server_sans: str | None = None) -> ClientCert:
        key = self.directory / f"{name}.key"
        csr = self.directory / f"{name}.csr"
        cert = self.directory / f"{name}.crt"
        ext = self.directory / f"{name}.ext"
        _ec_key(key)
        _openssl("req", "-new", "-key", str(key), "-subj", subject, "-out", str(csr))
        usage = "serverAuth" if server_sans else "clientAuth"
        lines = [f"extendedKeyUsage={usage}", "keyUsage=critical,digitalSignature"]
        if server_sans:
            lines.append(f"subjectAltName={server_sans}")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            "x509", "-req", "-in", str(csr), "-CA", str(self.ca_cert), "-CAkey", str(self.ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(ext), "-out", str(cert),
        )  # fmt: skip
        return ClientCert(cert=cert, key=key)

    def kubeconfig(self, path: Path, server: str, user: str, client: ClientCert) -> Path:
        path.write_text(
            f"""apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: {server}
    certificate-authority: {self.ca_cert}
users:
- name: {user}
  user:
    client-certificate: {client.cert}
    client-key: {client.key}
contexts:
- name: {user}@local
  context:
    cluster: local
    user: {user}
    namespace: default
current-context: {user}@local
"""
        )
        path.chmod(0o600)
        return path
