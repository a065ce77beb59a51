"""README.md stays true: its Pod spec is valid, and its variable table matches the agent."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from sidecar.config import COMMON_PARAMETERS, KIND_PARAMETERS, SETTINGS, load_settings
from tests.harness.cluster import ControlPlane
from tests.harness.kube import KubeClient
from tests.harness.workloads import create_agent_rbac

README = Path(__file__).resolve().parents[2] / "README.md"


def _pod_spec() -> dict[str, object]:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    pods = [yaml.safe_load(b) for b in blocks if "kind: Pod" in b]
    assert len(pods) == 1
    pod: dict[str, object] = pods[0]
    return pod


@pytest.mark.all_versions
def test_readme_pod_spec_is_accepted_by_the_api_server(
    control_plane: ControlPlane, admin: KubeClient, namespace: str, tmp_path: Path
) -> None:
    create_agent_rbac(admin, namespace)
    manifest = tmp_path / "pod.yaml"
    manifest.write_text(yaml.safe_dump(_pod_spec()))
    result = control_plane.kubectl(
        "apply", "-n", namespace, "--dry-run=server", "-f", str(manifest), check=False
    )
    assert result.returncode == 0, result.stderr
    assert "Warning" not in result.stderr


def test_readme_pod_spec_configures_the_agent_without_problems() -> None:
    pod = _pod_spec()
    containers = pod["spec"]["containers"]  # type: ignore[index]
    sidecar = next(c for c in containers if c["name"] == "readiness-gate")
    env = {e["name"]: e.get("value", "from-the-downward-api") for e in sidecar["env"]}
    settings = load_settings(
        {**env, "KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"},
        require_api=True,
    )
    assert settings.condition_type == "example.com/legacy-ready"
    assert settings.checks[0].params.pattern.search("Server startup in [3712] milliseconds")  # type: ignore[union-attr]
    assert settings.checks[0].params.pattern.search("Server startup in 1234 ms")  # type: ignore[union-attr]


def test_readme_documents_every_variable_the_agent_accepts() -> None:
    text = README.read_text()
    for suffix in SETTINGS:
        assert f"`GATE_{suffix}`" in text, f"GATE_{suffix} is not in README.md"
    documented_parameters = set(re.findall(r"CHECK_<ID>_([A-Z_]+)`", text))
    documented_parameters |= set(re.findall(r"`_([A-Z_]+)`", text))
    for suffix in set(COMMON_PARAMETERS) | {p for ps in KIND_PARAMETERS.values() for p in ps}:
        assert suffix in documented_parameters, f"CHECK_<ID>_{suffix} is not in README.md"
