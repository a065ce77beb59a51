"""The Helm chart: lint, render every CI value set, reject bad values, and run it for real.

helm is built from the version pinned in tests/harness/helmmod/go.mod. The rendered manifests go
into the real control plane with ``kubectl apply --server-side``; the hollow kubelet runs no
container, so the sidecar container of the rendered Pod is played by the agent as a local
subprocess, configured from that Pod as the kubelet would: its env (downward API resolved), its
ServiceAccount's Pod-bound token, its volume mounts mapped to directories in tmp_path.
"""

from __future__ import annotations

import json
import re
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import load_settings
from tests.harness.agent import STOP_BOUND, AgentProcess, agent_env, bound_token_dir
from tests.harness.binaries import HELM_GOMOD_DIR, module_version
from tests.harness.cluster import NODE_NAME, ControlPlane
from tests.harness.helm import CHART, POLICY_KINDS, RELEASE, Helm, Installer, by_kind, documents
from tests.harness.kube import (
    JSON,
    STRATEGIC,
    ApiError,
    KubeClient,
    condition,
    condition_status,
    wait_for,
)
from tests.harness.tokens import request_token
from tests.harness.workloads import PodRef, create_pod, endpoint_ready

ROOT = Path(__file__).resolve().parents[2]
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
EXAMPLE_POLICY = ROOT / "examples" / "rbac" / "validating-admission-policy.yaml"
SIDECAR = "readiness-gate"  # container.name
DOWNWARD_API = {"metadata.name", "metadata.namespace", "metadata.uid"}
SECURITY_CONTEXT = {
    "runAsNonRoot": True,
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


# --- helm ------------------------------------------------------------------------------------


def pod_spec(docs: list[JSON]) -> JSON:
    (deployment,) = by_kind(docs, "Deployment")
    spec: JSON = deployment["spec"]["template"]["spec"]
    return spec


def sidecar_of(spec: JSON) -> tuple[JSON, bool]:
    """The sidecar container of a Pod spec, and whether it is a native sidecar."""
    for key in ("containers", "initContainers"):
        for container in spec.get(key) or []:
            if container["name"] == SIDECAR:
                return container, key == "initContainers"
    raise AssertionError(f"no {SIDECAR} container in {json.dumps(spec)[:2000]}")


def stub_env(container: JSON) -> dict[str, str]:
    """The container's env with the downward API filled in, as the kubelet would."""
    env = {}
    for item in container["env"]:
        if "valueFrom" in item:
            field = item["valueFrom"]["fieldRef"]["fieldPath"]
            assert field in DOWNWARD_API
            env[item["name"]] = f"stub-{field.split('.')[-1]}"
        else:
            env[item["name"]] = item.get("value", "")
    return env


# --- no cluster needed -----------------------------------------------------------------------


def test_helm_is_the_pinned_version(helm: Helm) -> None:
    result = helm.run("version", "--template", "{{ .Version }}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == module_version(HELM_GOMOD_DIR, "helm.sh/helm/v3")


def test_chart_version_and_app_version_follow_the_project() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = (ROOT / "pyproject.toml").read_text()
    version = re.search(r'^version = "([^"]+)"', project, re.MULTILINE)
    assert version is not None
    assert chart["name"] == "readiness-gate-sidecar"
    assert chart["appVersion"] == version[1]


@pytest.mark.parametrize("strict", [False, True], ids=["lint", "lint-strict"])
@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "defaults")
def test_helm_lint(helm: Helm, values: Path | None, strict: bool) -> None:
    args = ["lint", str(CHART), *(["--strict"] if strict else [])]
    if values is not None:
        args += ["--values", str(values)]
    result = helm.run(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_helm_package_holds_the_schema_docs_and_value_sets(helm: Helm, tmp_path: Path) -> None:
    result = helm.run("package", str(CHART), "--destination", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (package,) = tmp_path.glob("readiness-gate-sidecar-*.tgz")
    with tarfile.open(package) as archive:
        names = set(archive.getnames())
    for name in ("Chart.yaml", "values.yaml", "values.schema.json", "README.md"):
        assert f"readiness-gate-sidecar/{name}" in names
    assert "readiness-gate-sidecar/templates/NOTES.txt" in names
    assert {f"readiness-gate-sidecar/ci/{v.name}" for v in CI_VALUES} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.stem)
def test_every_ci_value_set_renders_a_valid_sidecar(helm: Helm, values: Path) -> None:
    docs = documents(helm.template(str(values), namespace="shop"))
    kinds = {doc["kind"] for doc in docs}
    chosen = yaml.safe_load(values.read_text()) or {}
    for doc in docs:
        assert doc["apiVersion"]
        assert doc["metadata"]["name"]
        if doc["kind"] not in POLICY_KINDS:
            assert doc["metadata"]["namespace"] == "shop", doc["kind"]
    policy = (chosen.get("admissionPolicy") or {}).get("enabled", True)
    assert set(POLICY_KINDS) <= kinds if policy else not kinds & set(POLICY_KINDS)
    rbac = (chosen.get("rbac") or {}).get("create", True)
    assert {"Role", "RoleBinding"} <= kinds if rbac else not kinds & {"Role", "RoleBinding"}
    if not (chosen.get("example") or {}).get("enabled"):
        assert "Deployment" not in kinds
        return

    spec = pod_spec(docs)
    container, native = sidecar_of(spec)
    assert native == bool(chosen["example"].get("nativeSidecar"))
    assert (container.get("restartPolicy") == "Always") == native
    env = stub_env(container)
    # The agent accepts the configuration exactly as rendered.
    settings = load_settings(env, require_api=False)
    assert {check.id for check in settings.checks} == set(chosen["checks"])
    assert settings.http_port == container["ports"][0]["containerPort"] == 9779
    write = (chosen.get("gate") or {}).get("write", True)
    gates = sorted(gate for gate in settings.gates if gate is not None)
    declared = [g["conditionType"] for g in spec.get("readinessGates") or []]
    assert declared == (gates if write else [])
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    assert readiness["httpGet"] == {"path": "/readyz" if write else "/gate", "port": 9779}
    assert liveness["httpGet"] == {"path": "/healthz", "port": 9779}
    for key, value in SECURITY_CONTEXT.items():
        assert container["securityContext"][key] == value
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    # The sidecar reads the app's log directory, read-only, from the Pod's shared emptyDir.
    (logs,) = [m for m in container["volumeMounts"] if m["name"] == "logs"]
    assert logs["readOnly"] is True
    assert {"name": "logs", "emptyDir": {"sizeLimit": "64Mi"}} in spec["volumes"]
    assert spec["serviceAccountName"] == next(
        (d["metadata"]["name"] for d in by_kind(docs, "ServiceAccount")),
        (chosen.get("serviceAccount") or {}).get("name"),
    )


def test_defaults_render_the_rbac_and_the_policy_only(helm: Helm) -> None:
    docs = documents(helm.template(namespace="shop"))
    assert sorted(doc["kind"] for doc in docs) == sorted(
        ["ServiceAccount", "Role", "RoleBinding", *POLICY_KINDS]
    )
    (account,) = by_kind(docs, "ServiceAccount")
    assert account["metadata"]["name"] == "readiness-gate-sidecar-gate"
    (role,) = by_kind(docs, "Role")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
        {"apiGroups": ["", "events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]
    (binding,) = by_kind(docs, "RoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "readiness-gate-sidecar-gate", "namespace": "shop"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_pod_logs_add_a_role_of_their_own_granting_only_get_on_pods_log(helm: Helm) -> None:
    docs = documents(helm.template(namespace="shop", rbac__podLogs="true"))
    agent_role, logs_role = sorted(by_kind(docs, "Role"), key=lambda r: r["metadata"]["name"])
    assert logs_role["metadata"]["name"] == agent_role["metadata"]["name"] + "-pod-logs"
    assert logs_role["rules"] == [{"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]}]
    assert [rule["resources"] for rule in agent_role["rules"]] == [
        ["pods"],
        ["pods/status"],
        ["events"],
    ]  # the agent's own Role is unchanged
    bindings = {doc["roleRef"]["name"]: doc for doc in by_kind(docs, "RoleBinding")}
    assert sorted(bindings) == [agent_role["metadata"]["name"], logs_role["metadata"]["name"]]
    assert bindings[logs_role["metadata"]["name"]]["subjects"] == [
        {"kind": "ServiceAccount", "name": "readiness-gate-sidecar-gate", "namespace": "shop"}
    ]
    without_rbac = documents(helm.template(rbac__podLogs="true", rbac__create="false"))
    assert not by_kind(without_rbac, "Role")


def test_a_log_check_of_a_containers_output_renders_without_a_path(helm: Helm) -> None:
    check = '{"kind": "log", "container": "app", "pattern": "Server startup in"}'
    docs = documents(helm.template(example__enabled="true", checks__APP=check))
    env = stub_env(sidecar_of(pod_spec(docs))[0])
    assert "CHECK_APP_PATH" not in env
    (spec,) = load_settings(env, require_api=False).checks
    assert spec.params.output_of == "app"  # type: ignore[union-attr]


def test_the_gate_defaults_in_values_yaml_are_the_agents_own(helm: Helm) -> None:
    """values.yaml spells the agent's defaults out; rendering them changes nothing."""
    docs = documents(
        helm.template(example__enabled="true", checks__APP='{"kind": "file", "path": "/ready"}')
    )
    env = stub_env(sidecar_of(pod_spec(docs))[0])
    rendered = load_settings(env, require_api=False).describe()
    minimal = {
        name: value
        for name, value in env.items()
        if not name.startswith("GATE_") or name == "GATE_CONDITION_TYPE"
    }
    defaults = load_settings(minimal, require_api=False).describe()
    assert rendered.pop("http_address") == ":9779"
    defaults.pop("http_address")
    assert rendered == defaults


def test_fast_periods_render_as_their_variables_and_the_agent_applies_them(helm: Helm) -> None:
    docs = documents(
        helm.template(
            example__enabled="true",
            gate__fastPeriodSeconds="0.3",
            checks__DB='{"kind": "tcp", "address": ":5432"}',
            checks__WEB='{"kind": "http", "url": "http://127.0.0.1:8080/", "fastPeriodSeconds": 0}',
        )
    )
    env = stub_env(sidecar_of(pod_spec(docs))[0])

    assert env["GATE_FAST_PERIOD_SECONDS"] == "0.3"
    assert env["CHECK_WEB_FAST_PERIOD_SECONDS"] == "0"
    checks = load_settings(env, require_api=False).checks
    assert {check.id: check.timing.fast_period for check in checks} == {"DB": 0.3, "WEB": 0.0}


def test_chart_policy_is_the_example_policy(helm: Helm) -> None:
    """examples/rbac/validating-admission-policy.yaml is the source; the chart ports it.

    Only the names and the ServiceAccount match differ: the example matches every
    ServiceAccount named readiness-gate-sidecar(-*) cluster-wide, the chart the one it installs.
    """
    example = {doc["kind"]: doc for doc in documents(EXAMPLE_POLICY.read_text())}
    docs = documents(helm.template(namespace="shop"))
    chart = {kind: by_kind(docs, kind)[0] for kind in POLICY_KINDS}
    assert set(example) == set(POLICY_KINDS)

    policy, example_policy = chart[POLICY_KINDS[0]]["spec"], example[POLICY_KINDS[0]]["spec"]
    (match,) = policy.pop("matchConditions")
    (example_match,) = example_policy.pop("matchConditions")
    assert policy == example_policy
    assert match["name"] == example_match["name"]
    account = "system:serviceaccount:shop:readiness-gate-sidecar-gate"
    assert match["expression"] == f"request.userInfo.username == '{account}'"
    # The chart's default ServiceAccount also follows the example's naming convention, so the
    # cluster-wide example policy covers it as well.
    convention = re.fullmatch(r"request\.userInfo\.username\.matches\('(.+)'\)", example_match[
        "expression"
    ])  # fmt: skip
    assert convention is not None
    assert re.fullmatch(convention[1], account)

    binding, example_binding = chart[POLICY_KINDS[1]], example[POLICY_KINDS[1]]
    assert binding["spec"].pop("policyName") == chart[POLICY_KINDS[0]]["metadata"]["name"]
    example_binding["spec"].pop("policyName")
    assert binding["spec"] == example_binding["spec"]
    for kind in POLICY_KINDS:
        assert chart[kind]["metadata"]["name"] == "gate-readiness-gate-sidecar.shop"
        assert chart[kind]["apiVersion"] == example[kind]["apiVersion"]


PARENT_VALUES = """
gate:
  gate:
    conditionType: shop.example.com/ready
  checks:
    APP: {kind: log, path: /logs/catalina.out, pattern: 'Server startup in \\d+ ms'}
  container:
    volumeMounts: [{name: logs, mountPath: /logs, readOnly: true}]
"""
PARENT_POD_TEMPLATE = """
apiVersion: v1
kind: Pod
metadata:
  name: shop
spec:
  serviceAccountName: {{ include "readiness-gate-sidecar.serviceAccountName" .Subcharts.gate }}
  readinessGates:
    {{- include "readiness-gate-sidecar.readinessGates" .Subcharts.gate | nindent 4 }}
  initContainers:
    {{- include "readiness-gate-sidecar.nativeSidecar" .Subcharts.gate | nindent 4 }}
  containers:
    - name: app
      image: tomcat:9
    {{- include "readiness-gate-sidecar.container" .Subcharts.gate | nindent 4 }}
  volumes:
    - name: logs
      emptyDir: {}
"""


def test_a_parent_chart_includes_the_named_templates(helm: Helm, tmp_path: Path) -> None:
    """As chart/README.md documents: a dependency with an alias, included via .Subcharts."""
    parent = tmp_path / "shop"
    (parent / "templates").mkdir(parents=True)
    chart = {
        "apiVersion": "v2",
        "name": "shop",
        "version": "1.0.0",
        "dependencies": [
            {
                "name": "readiness-gate-sidecar",
                "version": yaml.safe_load((CHART / "Chart.yaml").read_text())["version"],
                "repository": f"file://{CHART}",
                "alias": "gate",
            }
        ],
    }
    (parent / "Chart.yaml").write_text(yaml.safe_dump(chart))
    (parent / "values.yaml").write_text(PARENT_VALUES)
    (parent / "templates" / "pod.yaml").write_text(PARENT_POD_TEMPLATE)
    built = helm.run("dependency", "build", str(parent))
    assert built.returncode == 0, built.stderr
    result = helm.run("template", "web", str(parent), "--namespace", "prod")
    assert result.returncode == 0, result.stderr
    docs = documents(result.stdout)
    (pod,) = by_kind(docs, "Pod")
    (account,) = by_kind(docs, "ServiceAccount")
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["name"] == "readiness-gate-sidecar-web"
    assert pod["spec"]["readinessGates"] == [{"conditionType": "shop.example.com/ready"}]
    (native,) = pod["spec"]["initContainers"]
    app, container = pod["spec"]["containers"]
    assert app["name"] == "app"
    assert native.pop("restartPolicy") == "Always"
    assert native == container
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    assert container["image"] == f"readiness-gate-sidecar:{app_version}"
    settings = load_settings(stub_env(container), require_api=False)
    assert settings.condition_type == "shop.example.com/ready"
    assert [check.id for check in settings.checks] == ["APP"]
    assert container["volumeMounts"] == [{"name": "logs", "mountPath": "/logs", "readOnly": True}]
    (policy,) = by_kind(docs, "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        "request.userInfo.username == 'system:serviceaccount:prod:readiness-gate-sidecar-web'"
    )


BAD_VALUES: dict[str, dict[str, str]] = {
    "unknown top-level key": {"replicaCount": "2"},
    "unknown gate setting": {"gate__perodSeconds": "5"},
    "negative period": {"gate__periodSeconds": "-1"},
    "zero timeout": {"gate__timeoutSeconds": "0"},
    "negative initial delay": {"gate__initialDelaySeconds": "-3"},
    "fractional threshold": {"gate__failureThreshold": "1.5"},
    "negative fast period": {"gate__fastPeriodSeconds": "-0.1"},
    "fast period as a string": {"gate__fastPeriodSeconds": '"100ms"'},
    "period as a string": {"gate__periodSeconds": '"5s"'},
    "bad mode": {"gate__mode": '"most"'},
    "bad log level": {"gate__logLevel": '"verbose"'},
    "write as a string": {"gate__write": '"yes"'},
    "builtin condition type": {"gate__conditionType": '"Ready"'},
    "condition type with spaces": {"gate__conditionType": '"my gate"'},
    "bad check kind": {"checks__APP": '{"kind": "carrier-pigeon"}'},
    "check without kind": {"checks__APP": '{"path": "/ready"}'},
    "check id with underscore": {"checks__MY_APP": '{"kind": "file", "path": "/ready"}'},
    "parameter of another kind": {
        "checks__APP": '{"kind": "file", "path": "/ready", "pattern": "x"}'
    },
    "log check without pattern": {"checks__APP": '{"kind": "log", "path": "/logs/app.log"}'},
    "relative path": {"checks__APP": '{"kind": "file", "path": "ready"}'},
    "negative check period": {
        "checks__APP": '{"kind": "file", "path": "/ready", "periodSeconds": -2}'
    },
    "fast period of a file check": {
        "checks__APP": '{"kind": "file", "path": "/ready", "fastPeriodSeconds": 0.1}'
    },
    "bad http status": {
        "checks__APP": '{"kind": "http", "url": "http://127.0.0.1/", "status": "2xx"}'
    },
    "bad url": {"checks__APP": '{"kind": "http", "url": "ftp://example.com/"}'},
    "unknown file state": {"checks__APP": '{"kind": "file", "path": "/r", "state": "stale"}'},
    "port out of range": {"container__port": "70000"},
    "unknown probe field": {"container__readinessProbe": '{"httpGet": {"path": "/"}}'},
    "bad pull policy": {"image__pullPolicy": '"Sometimes"'},
    "bad digest": {"image__digest": '"latest"'},
    "policy flag as a string": {"admissionPolicy__enabled": '"true"'},
    "pod logs flag as a string": {"rbac__podLogs": '"true"'},
    "log check without path or container": {
        "checks__APP": '{"kind": "log", "pattern": "Server startup in"}'
    },
    "example without checks": {"example__enabled": "true"},
    "existing account without a name": {"serviceAccount__create": "false"},
}


@pytest.mark.parametrize("sets", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_bad_values_fail_schema_validation(helm: Helm, sets: dict[str, str]) -> None:
    error = helm.template_error(**sets)
    assert "don't meet the specifications of the schema" in error, error


def test_the_example_needs_a_condition_type_to_declare(helm: Helm) -> None:
    error = helm.template_error(
        example__enabled="true",
        gate__conditionType='""',
        checks__APP='{"kind": "file", "path": "/ready"}',
    )
    assert "example: set gate.conditionType" in error


# --- against the real control plane ----------------------------------------------------------


@pytest.fixture
def installer(control_plane: ControlPlane) -> Iterator[Installer]:
    installer = Installer(control_plane)
    yield installer
    installer.cleanup()


@pytest.mark.all_versions
@pytest.mark.parametrize("values", CI_VALUES, ids=lambda v: v.stem)
def test_rendered_manifests_pass_server_side_dry_run(
    helm: Helm, installer: Installer, namespace: str, values: Path
) -> None:
    manifests = helm.template(str(values), namespace=namespace)
    out = installer.apply(manifests, dry_run=True)
    assert len(out.strip().splitlines()) == len(documents(manifests))


@pytest.mark.all_versions
def test_helm_install_against_the_cluster_passes_the_charts_kube_version(
    helm: Helm, control_plane: ControlPlane, namespace: str
) -> None:
    """``kubeVersion: >=1.30.0-0`` in Chart.yaml, checked by helm against the server's own
    version (``--dry-run=server`` asks the cluster; ``helm template`` assumes helm's default)."""
    result = helm.run(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--dry-run=server",
        f"--kubeconfig={control_plane.kubeconfig}",
        "--values", str(CHART / "ci" / "example-values.yaml"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "STATUS: pending-install" in result.stdout


def test_notes_print_the_readiness_gates_snippet_and_a_watch_command(
    helm: Helm, control_plane: ControlPlane, namespace: str
) -> None:
    values = CHART / "ci" / "multi-gate-values.yaml"
    result = helm.run(
        "install", RELEASE, str(CHART), "--namespace", namespace, "--dry-run=client",
        f"--kubeconfig={control_plane.kubeconfig}", "--values", str(values),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "serviceAccountName: readiness-gate-sidecar-gate" in notes
    assert (
        "      readinessGates:\n"
        "        - conditionType: example.com/app-ready\n"
        "        - conditionType: example.com/db-ready\n"
    ) in notes
    watch = next(line.strip() for line in notes.splitlines() if "custom-columns" in line)
    assert watch.startswith(f"kubectl get pods -n {namespace} -w -o custom-columns=")
    assert '.status.conditions[?(@.type=="example.com/db-ready")].status' in watch
    # The command is valid: kubectl accepts the columns (a one-shot get, not a watch).
    args = watch.split("custom-columns=", 1)[1].strip("'")
    listed = control_plane.kubectl("get", "pods", "-n", namespace, "-o", f"custom-columns={args}")
    assert listed.returncode == 0


class PodAsKubeletRunsIt:
    """The sidecar container of a real Pod, run as a local agent process.

    The env is the container's own, with the downward API resolved from the Pod; each volume mount
    is a directory under ``root`` (paths in the env are rewritten accordingly); the token is bound
    to the Pod, for the Pod's ServiceAccount, where Kubernetes mounts it (GATE_TOKEN_DIR).
    """

    def __init__(self, plane: ControlPlane, pod: JSON, root: Path) -> None:
        self.pod = pod
        self.container, self.native = sidecar_of(pod["spec"])
        self.mounts: dict[str, Path] = {
            str(mount["mountPath"]): root / "volumes" / str(mount["name"])
            for mount in self.container.get("volumeMounts") or []
        }
        for directory in self.mounts.values():
            directory.mkdir(parents=True, exist_ok=True)
        meta = pod["metadata"]
        self.ref = PodRef(
            namespace=meta["namespace"], name=meta["name"], uid=meta["uid"], labels=meta["labels"]
        )
        self.account = pod["spec"]["serviceAccountName"]
        self.token = bound_token_dir(plane, self.ref, root / "token", self.account)

    def host_path(self, path: str) -> Path:
        for mount_path, directory in self.mounts.items():
            if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
                return directory / path[len(mount_path) :].lstrip("/")
        raise AssertionError(f"{path} is on no volume of the sidecar")

    def env(self) -> dict[str, str]:
        fields = {"metadata.name": self.ref.name, "metadata.namespace": self.ref.namespace}
        fields["metadata.uid"] = self.ref.uid
        env = {}
        for item in self.container["env"]:
            if "valueFrom" in item:
                value = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
            else:
                value = item.get("value", "")
                if value.startswith("/"):
                    value = str(self.host_path(value))
            env[item["name"]] = value
        return env

    def start(self) -> AgentProcess:
        return AgentProcess(agent_env(self.ref, self.token.path, self.env()))

    def probe(self, kind: str) -> int:
        """The kubelet's httpGet probe (readinessProbe, livenessProbe) of the sidecar."""
        action = self.container[kind]["httpGet"]
        url = f"http://127.0.0.1:{action['port']}{action['path']}"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                status: int = resp.status
                return status
        except urllib.error.HTTPError as err:
            return err.code


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        if agent.returncode is None:
            agent.kill()


def _example_pod(admin: KubeClient, namespace: str) -> JSON:
    selector = "app.kubernetes.io/component=example,app.kubernetes.io/instance=" + RELEASE

    def pod() -> JSON | None:
        pods = admin.get(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)["items"]
        return pods[0] if pods else None

    found: JSON = wait_for("the example Deployment's Pod", pod, timeout=60)
    return found


def _waiter(
    admin: KubeClient, ref: PodRef, describe: Callable[[], str]
) -> Callable[[str, str], None]:
    def wait(condition_type: str, status: str) -> None:
        wait_for(
            f"{condition_type} {status}",
            lambda: condition_status(admin.pod(ref.namespace, ref.name), condition_type) == status,
            timeout=30,
            describe=describe,
        )

    return wait


@pytest.mark.all_versions
@pytest.mark.parametrize("native", [False, True], ids=["container", "native-sidecar"])
def test_example_workload_gate_false_true_then_pod_ready(
    *,
    helm: Helm,
    installer: Installer,
    admin: KubeClient,
    control_plane: ControlPlane,
    namespace: str,
    agents: list[AgentProcess],
    tmp_path: Path,
    native: bool,
) -> None:
    manifests = helm.template(
        str(CHART / "ci/example-values.yaml"),
        namespace=namespace,
        example__nodeName=json.dumps(NODE_NAME),
        example__nativeSidecar=json.dumps(native),
    )
    installer.apply(manifests)
    pod = _example_pod(admin, namespace)
    assert pod["spec"]["serviceAccountName"] == "readiness-gate-sidecar-gate"
    gate = pod["spec"]["readinessGates"][0]["conditionType"]
    sidecar = PodAsKubeletRunsIt(control_plane, pod, tmp_path)
    assert sidecar.native == native
    # The API server kept the field (a server with SidecarContainers off drops it silently).
    assert (sidecar.container.get("restartPolicy") == "Always") == native
    agent = sidecar.start()
    agents.append(agent)
    ref, wait = sidecar.ref, _waiter(admin, sidecar.ref, agent.describe)
    if native:
        # The kubelet has started the sidecar and counts the Pod initialised while it runs on.
        wait("Initialized", "True")
    else:
        # The hollow kubelet's fake prober marks regular containers ready, never init containers.
        wait("ContainersReady", "True")
    agent.wait_started()
    wait(gate, "False")
    first_write = agent.wait_for_log("gate_written")
    assert first_write["reason"] == "ChecksPending"  # written at once, before checks decide
    pending = condition(admin.pod(ref.namespace, ref.name), gate)
    assert pending is not None
    # 3 failures take ~2 s. Until the app container runs, the gate says so: a native sidecar
    # starts before it, and the hollow kubelet reports ContainersReady one status write before
    # the containers run.
    assert pending["reason"] in ("ChecksPending", "CheckFailed", "ContainerNotRunning")
    assert condition_status(admin.pod(ref.namespace, ref.name), "Ready") == "False"
    assert sidecar.probe("livenessProbe") == 200
    wait_for(
        "the sidecar's own readiness (/readyz)", lambda: sidecar.probe("readinessProbe") == 200
    )

    # The legacy application finishes starting: the line appears in the shared log.
    log = sidecar.host_path("/logs/catalina.out")
    log.write_text("INFO Starting Servlet engine\nINFO Server startup in 20000 ms\n")
    wait(gate, "True")
    passed = condition(admin.pod(ref.namespace, ref.name), gate)
    assert passed is not None
    assert passed["reason"] == "ChecksPassed"
    if native:
        # Ready also needs ContainersReady, which the hollow kubelet never grants a native
        # sidecar; the rest of the way is the same as for a regular container.
        assert agent.stop() < STOP_BOUND
        return
    wait("Ready", "True")
    deployment = (
        f"/apis/apps/v1/namespaces/{namespace}/deployments/{RELEASE}-readiness-gate-sidecar-example"
    )
    wait_for(
        "the Deployment to count the Pod available",
        lambda: admin.get(deployment).get("status", {}).get("availableReplicas") == 1,
        timeout=60,
    )
    service = f"{RELEASE}-readiness-gate-sidecar-example"
    wait_for(
        "the Service's endpoint to be ready",
        lambda: endpoint_ready(admin, namespace, service, ref.name),
        timeout=60,
    )

    # The application breaks down: the fail pattern takes the Pod out again.
    with log.open("a") as out:
        out.write("SEVERE: Servlet engine stopped\n")
    wait(gate, "False")
    wait("Ready", "False")
    assert agent.stop() < STOP_BOUND
    assert agent.returncode == 0
    assert "Traceback" not in agent.stderr


@pytest.mark.all_versions
def test_chart_policy_confines_the_service_account_it_names(
    *,
    helm: Helm,
    installer: Installer,
    admin: KubeClient,
    control_plane: ControlPlane,
    namespace: str,
    tmp_path: Path,
) -> None:
    """With a ServiceAccount outside the example's naming convention, only the chart's policy
    matches it: its own gate passes, anything else is denied by that policy."""
    account = "legacy-app-gate"
    manifests = helm.template(namespace=namespace, serviceAccount__name=json.dumps(account))
    installer.apply(manifests)
    policy = f"{RELEASE}-readiness-gate-sidecar.{namespace}"
    pod = create_pod(admin, namespace, service_account=account)
    other = create_pod(admin, namespace, service_account=account)
    token = bound_token_dir(control_plane, pod, tmp_path / "token", account).token
    bound = admin.with_token(token, control_plane.pki.ca_cert)
    gate = pod_gate(admin, pod)

    def patch(client: KubeClient, target: PodRef, condition_type: str) -> None:
        client.request(
            "PATCH",
            f"/api/v1/namespaces/{namespace}/pods/{target.name}/status",
            {"status": {"conditions": [{"type": condition_type, "status": "True"}]}},
            content_type=STRATEGIC,
            query={"dryRun": "All"},
        )

    def denied_by_policy(client: KubeClient, target: PodRef, condition_type: str) -> str | None:
        try:
            patch(client, target, condition_type)
        except ApiError as err:
            if err.status == 403 and policy in err.message:
                return err.message
            if err.status != 403:
                raise
        return None  # allowed, or RBAC not seen yet: the policy is not enforced yet

    # Policies are enforced asynchronously (the admission plugin watches them).
    message = wait_for(
        "the chart's policy to be enforced", lambda: denied_by_policy(bound, pod, "Ready")
    )
    assert "[Ready]" in message
    patch(bound, pod, gate)  # its own gate: allowed
    other_message = denied_by_policy(bound, other, gate)
    assert other_message is not None
    assert other.name in other_message
    unbound = admin.with_token(
        request_token(admin, namespace, account, pod=None, seconds=600),
        control_plane.pki.ca_cert,
    )
    unbound_message = denied_by_policy(unbound, pod, gate)
    assert unbound_message is not None


def pod_gate(admin: KubeClient, pod: PodRef) -> str:
    spec: Any = admin.pod(pod.namespace, pod.name)["spec"]
    gate: str = spec["readinessGates"][0]["conditionType"]
    return gate
