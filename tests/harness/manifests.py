"""The runnable examples in ``examples/<name>/``: their manifests, and their sidecar played locally.

The hollow kubelet "runs" a Pod without running any of its containers, so a test plays the sidecar
container itself: the agent as a local process, configured from the example's own manifest the
way the kubelet would configure the container. ``LocalSidecar`` does the few substitutions that
running it outside the Pod requires, and nothing else:

- ``valueFrom.fieldRef`` (the downward API): the live Pod's name, namespace and UID;
- every volume of the Pod is a directory on this machine, so a ``CHECK_<ID>_PATH`` (or a
  ``unix:`` address) inside one of the sidecar's volume mounts becomes the same file in that
  directory; a path outside every mount fails the test: the sidecar could not see that file;
- an address (``CHECK_<ID>_ADDRESS``, the host and port of ``CHECK_<ID>_URL``) becomes
  127.0.0.1 and the local port that the test maps the container port to;
- ``GATE_HTTP_ADDRESS`` becomes ``127.0.0.1:0``.

Every other variable is passed exactly as the manifest has it.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from tests.harness.kube import JSON
from tests.harness.workloads import PodRef

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES_DIR = ROOT / "examples"
SIDECAR_IMAGE_NAME = "readiness-gate-sidecar"
SIDECAR_CONTAINER = "readiness-gate"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")  # what `kubectl apply -f <dir>` reads
# kind -> the path from the object to its Pod spec
_POD_SPEC_PATHS: Mapping[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_DOWNWARD_API = {"metadata.name", "metadata.namespace", "metadata.uid"}
_CHECK_PATH = re.compile(r"CHECK_[A-Za-z0-9]+_PATH")
_CHECK_ADDRESS = re.compile(r"CHECK_[A-Za-z0-9]+_ADDRESS")
_CHECK_URL = re.compile(r"CHECK_[A-Za-z0-9]+_URL")
_HOST_PORT = re.compile(r"(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:]*)):(?P<port>\d+)")


def project_version() -> str:
    with (ROOT / "pyproject.toml").open("rb") as stream:
        version: str = tomllib.load(stream)["project"]["version"]
    return version


def sidecar_image() -> str:
    """The image the examples run: the one the Dockerfile builds for this version."""
    return f"{SIDECAR_IMAGE_NAME}:{project_version()}"


def example_names() -> list[str]:
    """Every directory of examples/ with manifests, except the RBAC that the others refer to."""
    return sorted(
        path.name
        for path in EXAMPLES_DIR.iterdir()
        if path.is_dir() and path.name != "rbac" and _manifest_files(path)
    )


def _manifest_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix in MANIFEST_SUFFIXES)


def pod_spec_of(document: JSON) -> JSON | None:
    """The Pod spec of a Pod or of a workload's Pod template; None for other kinds."""
    path = _POD_SPEC_PATHS.get(document.get("kind", ""))
    if path is None:
        return None
    spec: JSON = document
    for key in path:
        spec = spec[key]
    return spec


def sidecar_of(spec: JSON) -> JSON:
    """The readiness-gate-sidecar container of a Pod spec (exactly one)."""
    found: list[JSON] = [
        container
        for key in ("containers", "initContainers")
        for container in spec.get(key) or []
        if str(container.get("image", "")).partition(":")[0] == SIDECAR_IMAGE_NAME
    ]
    assert len(found) == 1, f"expected one {SIDECAR_IMAGE_NAME} container, found {len(found)}"
    return found[0]


def container_of(spec: JSON, name: str) -> JSON:
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container["name"] == name:
                found: JSON = container
                return found
    raise AssertionError(f"no container {name!r} in the Pod spec")


def plain_env(container: JSON) -> dict[str, str]:
    """The container's literal ``value`` entries (``valueFrom`` ones are left out)."""
    return {
        item["name"]: str(item.get("value", ""))
        for item in container.get("env") or []
        if "valueFrom" not in item
    }


@dataclass(frozen=True, slots=True)
class Example:
    """One directory of examples/: its manifests in the order `kubectl apply -f <dir>` uses."""

    name: str
    directory: Path
    documents: tuple[JSON, ...]

    @classmethod
    def load(cls, name: str) -> Example:
        directory = EXAMPLES_DIR / name
        documents: list[JSON] = []
        for path in _manifest_files(directory):
            with path.open() as stream:
                documents += [doc for doc in yaml.safe_load_all(stream) if doc]
        assert documents, f"{directory} holds no manifests"
        return cls(name, directory, tuple(documents))

    @property
    def readme(self) -> str:
        return (self.directory / "README.md").read_text()

    def workloads(self) -> Iterator[tuple[JSON, JSON]]:
        """Every object that makes Pods, with its Pod spec."""
        for document in self.documents:
            spec = pod_spec_of(document)
            if spec is not None:
                yield document, spec

    def only_workload(self) -> tuple[JSON, JSON]:
        (workload,) = self.workloads()
        return workload

    @property
    def writes(self) -> bool:
        """Whether any sidecar writes a condition (and so needs examples/rbac)."""
        return any(
            plain_env(sidecar_of(spec)).get("GATE_WRITE", "true").lower() != "false"
            for _, spec in self.workloads()
        )

    def on_node(self, node: str) -> str:
        """The manifests as one YAML stream, every Pod (template) bound to ``node``."""
        documents = [copy.deepcopy(doc) for doc in self.documents]
        for document in documents:
            spec = pod_spec_of(document)
            if spec is not None:
                spec["nodeName"] = node
        return yaml.safe_dump_all(documents, sort_keys=False)


class LocalSidecar:
    """The sidecar container of one live Pod of an example, to run as a local agent process.

    ``spec`` is the Pod spec from the example's manifest (the sidecar's env, its mounts, the
    volumes); ``pod`` the live Pod made from it (its identity); every volume of the Pod is a
    directory under ``root``; ``ports`` maps container ports to local ports.
    """

    def __init__(
        self, spec: JSON, pod: JSON, root: Path, ports: Mapping[int, int] | None = None
    ) -> None:
        self.spec = spec
        self.container = sidecar_of(spec)
        self.ports = dict(ports or {})
        meta = pod["metadata"]
        self.ref = PodRef(
            namespace=meta["namespace"],
            name=meta["name"],
            uid=meta["uid"],
            labels=meta.get("labels") or {},
        )
        self.volumes = {
            volume["name"]: root / "volumes" / volume["name"]
            for volume in spec.get("volumes") or []
        }
        for directory in self.volumes.values():
            directory.mkdir(parents=True, exist_ok=True)

    def host_path(self, path: str, container: str | None = None) -> Path:
        """Where ``path`` as ``container`` (default: the sidecar) sees it is on this machine."""
        owner = self.container if container is None else container_of(self.spec, container)
        mounts: list[JSON] = owner.get("volumeMounts") or []
        for mount in sorted(mounts, key=lambda m: len(m["mountPath"]), reverse=True):
            base = str(mount["mountPath"]).rstrip("/")
            if path == base or path.startswith(base + "/"):
                volume: Path = self.volumes[mount["name"]]
                return volume / str(mount.get("subPath", "")) / path[len(base) :].lstrip("/")
        who = container or self.container["name"]
        raise AssertionError(f"{path} is on no volume that container {who} mounts")

    def env(self) -> dict[str, str]:
        """The sidecar's environment, as the kubelet would set it, localised (module docstring)."""
        fields = {
            "metadata.name": self.ref.name,
            "metadata.namespace": self.ref.namespace,
            "metadata.uid": self.ref.uid,
        }
        env: dict[str, str] = {}
        for item in self.container.get("env") or []:
            name = item["name"]
            if "valueFrom" in item:
                field = item["valueFrom"]["fieldRef"]["fieldPath"]
                assert field in _DOWNWARD_API, f"{name}: unexpected valueFrom {item['valueFrom']}"
                env[name] = fields[field]
            else:
                env[name] = self._localise(name, str(item.get("value", "")))
        return env

    def _localise(self, name: str, value: str) -> str:
        if name == "GATE_HTTP_ADDRESS":
            return "127.0.0.1:0"
        if _CHECK_PATH.fullmatch(name):
            return str(self.host_path(value))
        if _CHECK_ADDRESS.fullmatch(name):
            if value.startswith("unix:"):
                return "unix:" + str(self.host_path(value.removeprefix("unix:")))
            return self._local_address(name, value)
        if _CHECK_URL.fullmatch(name):
            parts = urlsplit(value)
            default = 443 if parts.scheme == "https" else 80
            local = self._local_port(name, parts.port or default)
            userinfo = parts.netloc.rpartition("@")[0]
            netloc = f"{userinfo}@127.0.0.1:{local}" if userinfo else f"127.0.0.1:{local}"
            return parts._replace(netloc=netloc).geturl()
        return value

    def _local_address(self, name: str, value: str) -> str:
        match = _HOST_PORT.fullmatch(value)
        assert match is not None, f"{name}={value}: not host:port"
        return f"127.0.0.1:{self._local_port(name, int(match['port']))}"

    def _local_port(self, name: str, port: int) -> int:
        assert port in self.ports, f"{name}: the test maps no local port to port {port}"
        return self.ports[port]

    def probe_path(self, probe: str) -> str:
        """The path of the sidecar's httpGet ``readinessProbe`` or ``livenessProbe``."""
        path: str = self.container[probe]["httpGet"]["path"]
        return path
