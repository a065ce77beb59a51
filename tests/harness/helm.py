"""helm (built from tests/harness/helmmod) rendering the chart, and applying what it renders.

The chart tests (tests/e2e/test_chart.py) and the real node's tests (tests/node) render the chart
exactly as a user would: ``helm template`` of ``chart/`` with values, applied with
``kubectl apply --server-side``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.harness.cluster import ControlPlane
from tests.harness.kube import JSON

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "chart"
RELEASE = "gate"
POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")


@dataclass(frozen=True, slots=True)
class Helm:
    binary: Path
    home: Path  # helm's config, data and cache directories: nothing of the user's

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {"PATH": "/usr/bin:/bin", "HOME": str(self.home)}
        for kind in ("CONFIG", "DATA", "CACHE"):
            env[f"HELM_{kind}_HOME"] = str(self.home / kind.lower())
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=env,
        )

    def template(
        self, *values: str, namespace: str = "default", release: str = RELEASE, **sets: str
    ) -> str:
        """``helm template``; ``values`` are -f files, ``sets`` --set (``__`` for ``.``)."""
        result = self.run(*self._template_args(values, namespace, release, sets))
        assert result.returncode == 0, result.stderr
        return result.stdout

    def template_error(self, *values: str, **sets: str) -> str:
        result = self.run(*self._template_args(values, "default", RELEASE, sets))
        assert result.returncode != 0, f"rendered, but should not have:\n{result.stdout[:2000]}"
        return result.stderr

    @staticmethod
    def _template_args(
        values: tuple[str, ...], namespace: str, release: str, sets: Mapping[str, str]
    ) -> list[str]:
        args = ["template", release, str(CHART), "--namespace", namespace]
        for path in values:
            args += ["--values", path]
        for key, value in sets.items():
            args += ["--set-json", f"{key.replace('__', '.')}={value}"]
        return args


def documents(text: str) -> list[JSON]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs: list[JSON], kind: str) -> list[JSON]:
    return [doc for doc in docs if doc["kind"] == kind]


class Installer:
    """Applies rendered manifests; deletes the cluster-scoped ones (the policy) afterwards."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.cluster_scoped: list[JSON] = []

    def apply(self, manifests: str, *, dry_run: bool = False) -> str:
        args = ["apply", "--server-side", "--field-manager=helm-template", "-f", "-"]
        if dry_run:
            args.append("--dry-run=server")
        else:
            docs = documents(manifests)
            self.cluster_scoped += [doc for doc in docs if doc["kind"] in POLICY_KINDS]
        result = self.plane.kubectl(*args, input_text=manifests, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def cleanup(self) -> None:
        for doc in reversed(self.cluster_scoped):
            self.plane.kubectl(
                "delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found", check=False
            )
