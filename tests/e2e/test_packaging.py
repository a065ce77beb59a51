"""The container image's install steps, performed without Docker, and the Dockerfile's lint.

There is no Docker engine here, so the test repeats what the Dockerfile's builder stage does, on
the same build context (what .dockerignore lets through): the dependencies from pyproject.toml as
wheels into a pip-less virtual environment, the project's wheel on top with no dependencies of its
own, everything compiled to bytecode. Then it runs the console script from that environment as the
image's ENTRYPOINT would: ``--version``, and ``check`` with a passing and a failing configuration.

Slow-ish (a minute): it downloads the dependencies and hatchling from PyPI (pip's cache helps).
Once a test has started the control plane, this process lives in a private network namespace with
no way out; pip and build then run in the network namespace the test run started in.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CONTEXT = ("pyproject.toml", "README.md", "sidecar")  # the .dockerignore allow-list
SCRIPT = "readiness-gate-sidecar"
_CLONE_NEWNET = 0x40000000
# Opened at import, i.e. at collection, before any test can have entered a private namespace.
_STARTING_NETWORK = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)


def _network_subprocess(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with access to PyPI: in the network namespace this test run started in."""
    moved = Path("/proc/self/ns/net").stat().st_ino != os.fstat(_STARTING_NETWORK).st_ino

    def enter_starting_network() -> None:  # in the child, before exec
        if moved and ctypes.CDLL(None, use_errno=True).setns(_STARTING_NETWORK, _CLONE_NEWNET):
            os._exit(121)

    return subprocess.run(
        argv,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=enter_starting_network,  # a single setns(): async-signal-safe
    )


@dataclass(frozen=True, slots=True)
class Installed:
    venv: Path
    wheel: Path
    version: str

    @property
    def script(self) -> Path:
        return self.venv / "bin" / SCRIPT

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The console script with only the given environment (an image has no GATE_* of ours)."""
        base = {
            "PATH": f"{self.venv / 'bin'}:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "PYTHONDONTWRITEBYTECODE": "1",  # as the image's ENV
        }
        return subprocess.run(
            [str(self.script), *args],
            env=base | dict(env or {}),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )


def _pip(installer: Path, *args: str) -> None:
    """pip of the installer's own environment, as in the builder stage."""
    result = _network_subprocess([str(installer / "bin" / "python"), "-m", "pip", *args])
    assert result.returncode == 0, f"pip {' '.join(args)} failed:\n{result.stderr[-4000:]}"


def _build_pin() -> str:
    """The build front end's pin: the same as the test extra's."""
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["test"]
    pin: str = next(r for r in test_extra if r.startswith("build=="))
    return pin


def _copy_context(destination: Path) -> Path:
    destination.mkdir()
    for name in CONTEXT:
        source = ROOT / name
        if source.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "*.pyd")
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """The builder stage, step by step (see the Dockerfile)."""
    work = tmp_path_factory.mktemp("image")
    context = _copy_context(work / "src")
    venv = work / "venv"
    installer = work / "installer"
    # RUN python3 -m venv /opt/installer && /opt/installer/bin/python -m pip install build==...
    #     && python3 -m venv --without-pip /opt/venv
    subprocess.run([sys.executable, "-m", "venv", str(installer)], check=True)
    _pip(installer, "install", _build_pin())
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Layer 1: the dependencies, from pyproject.toml, wheels only.
    project = tomllib.loads((context / "pyproject.toml").read_text())["project"]
    requirements = work / "requirements.txt"
    requirements.write_text("\n".join(project["dependencies"]) + "\n")
    python = str(venv / "bin" / "python")
    _pip(installer, "--python", python, "install", "--only-binary=:all:", "-r", str(requirements))
    # Layer 2: the wheel (python -m build --wheel), installed alone, then bytecode.
    dist = work / "dist"
    build = _network_subprocess(
        [str(installer / "bin" / "python"), "-m", "build", "--wheel", "--outdir", str(dist),
         str(context)]
    )  # fmt: skip
    assert build.returncode == 0, f"python -m build failed:\n{build.stdout[-3000:]}{build.stderr}"
    (wheel,) = dist.glob("*.whl")
    _pip(installer, "--python", python, "install", "--no-deps", "--only-binary=:all:", str(wheel))
    subprocess.run(
        [
            python, "-m", "compileall", "-q", "-f", "-j", "0",
            "--invalidation-mode", "unchecked-hash", str(venv / "lib"),
        ],
        check=True,
    )  # fmt: skip
    return Installed(venv=venv, wheel=wheel, version=project["version"])


def _files(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*") if path.is_file()}


def test_the_wheel_holds_the_package_and_its_console_script(installed: Installed) -> None:
    assert installed.wheel.name == f"readiness_gate_sidecar-{installed.version}-py3-none-any.whl"
    listing = subprocess.run(
        [sys.executable, "-m", "zipfile", "-l", str(installed.wheel)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "sidecar/cli.py" in listing
    assert "sidecar/checks/log.py" in listing
    assert "tests/" not in listing
    assert installed.script.is_file()
    # The environment has no pip, so the image carries no installer (nor build front end).
    assert not list(installed.venv.glob("lib/python*/site-packages/pip"))
    assert not list(installed.venv.glob("lib/python*/site-packages/build"))


def test_version_prints_the_project_version(installed: Installed) -> None:
    result = installed.run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{SCRIPT} {installed.version}"


def test_check_passes_against_a_real_file_and_port(installed: Installed, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.write_text("started\n")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        result = installed.run(
            "check",
            env={
                "GATE_CONDITION_TYPE": "example.com/legacy-ready",
                "CHECK_APP_KIND": "file",
                "CHECK_APP_PATH": str(ready),
                "CHECK_APP_CONTAINS": "started",
                "CHECK_PORT_KIND": "tcp",
                "CHECK_PORT_ADDRESS": f"127.0.0.1:{port}",
            },
        )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASS  file APP" in result.stdout
    assert "PASS  tcp PORT" in result.stdout
    assert "gate example.com/legacy-ready: True" in result.stdout


def test_check_fails_with_exit_1_when_the_app_is_not_ready(
    installed: Installed, tmp_path: Path
) -> None:
    result = installed.run(
        "check",
        env={
            "GATE_CONDITION_TYPE": "example.com/legacy-ready",
            "CHECK_APP_KIND": "file",
            "CHECK_APP_PATH": str(tmp_path / "never-written"),
        },
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  file APP" in result.stdout
    assert "gate example.com/legacy-ready: False" in result.stdout


def test_check_rejects_an_invalid_configuration_with_exit_2(installed: Installed) -> None:
    result = installed.run("check", env={"CHECK_APP_KIND": "carrier-pigeon"})
    assert result.returncode == 2
    assert "CHECK_APP_KIND" in result.stderr


def test_the_installed_code_needs_no_bytecode_written_at_run_time(
    installed: Installed, tmp_path: Path
) -> None:
    """A read-only root filesystem works: everything the agent imports is compiled already.

    Without PYTHONDONTWRITEBYTECODE, Python writes a .pyc for any module it had to compile; the
    whole agent (the Kubernetes client and the HTTP server included) is imported, and no file in
    the environment may appear or change.
    """
    before = {path: path.stat().st_mtime_ns for path in _files(installed.venv)}
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    result = subprocess.run(
        [
            str(installed.venv / "bin" / "python"), "-c",
            "import sidecar.cli, sidecar.runtime, sidecar.gate, sidecar.server, sidecar.checks",
        ],
        env=env, capture_output=True, text=True, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    after = {path: path.stat().st_mtime_ns for path in _files(installed.venv)}
    assert after == before, sorted(str(p) for p in set(after) ^ set(before))


def test_dockerfile_matches_what_this_test_does() -> None:
    """The invariants the test relies on, read from the Dockerfile itself."""
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM\s+(\S+)\s+AS\s+(\w+)", text, re.MULTILINE)
    assert [stage for _, stage in stages] == ["builder", "runtime"]
    assert {image for image, _ in stages} == {"${PYTHON_IMAGE}"}, "one base for both stages"
    assert "python3 -m venv /opt/installer" in text
    assert "python3 -m venv --without-pip /opt/venv" in text
    assert text.count("/opt/installer/bin/python -m pip --python /opt/venv/bin/python install") == 2
    assert text.count("--only-binary=:all:") == 2
    assert "install --no-deps" in text
    assert "--invalidation-mode unchecked-hash" in text
    # The build front end is the same pin as the test extra.
    assert f"/opt/installer/bin/python -m pip install {_build_pin()}" in text
    # Nothing only one kind of base has: `python3` on PATH, the stdlib's path from sysconfig.
    instructions = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert not re.search(r"(?<![/\w-])python\s", instructions), "a bare `python`: not in Debian"
    assert "/usr/local/lib/python" not in text
    runtime = text.split(" AS runtime", 1)[1]
    assert re.findall(r"^COPY .*$", runtime, re.MULTILINE) == [
        "COPY --from=builder /opt/venv /opt/venv"
    ]
    assert re.search(r"^USER 65532:65532$", runtime, re.MULTILINE)
    assert re.search(r"^ENV PATH=\"/opt/venv/bin:", runtime, re.MULTILINE)
    assert "PYTHONDONTWRITEBYTECODE=1" in runtime
    assert "pip uninstall --yes --no-input pip setuptools wheel" in runtime
    assert "python3 -m compileall" in runtime  # the standard library too
    assert 'sysconfig.get_path("stdlib")' in runtime
    assert re.search(r"^EXPOSE 9779$", runtime, re.MULTILINE)
    assert runtime.rstrip().endswith('ENTRYPOINT ["readiness-gate-sidecar"]')
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"ARG VERSION={project['version']}\n" in runtime
    for label in ("title", "description", "version", "revision", "created", "licenses"):
        assert f"org.opencontainers.image.{label}=" in runtime
    # The build context is exactly what the install needs.
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = [line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")]
    assert sorted(allowed) == sorted(CONTEXT)


def test_hadolint_passes() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)],
        cwd=ROOT,  # .hadolint.yaml, if there is one, is read from here
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
