"""Container images for the real node, built without a registry, once, and cached.

- ``pause``: the Pod sandbox, a tiny static C program (``imagesrc/pause.c``).
- ``python``: a Python 3.11 base from Debian 12's ``python3`` + ``python3-venv`` (mmdebstrap), the
  ``PYTHON_IMAGE`` build argument of the project's Dockerfile; it is not imported into the node.
- ``agent``: the project's own ``Dockerfile``, built with buildah (``--pull=never``) FROM that base,
  named as the chart renders it by default (``readiness-gate-sidecar:<version>``).
- ``tomcat``, ``redis``: real legacy servers from Debian packages (``tomcat10``, ``redis-server``).

Debian root filesystems come from mmdebstrap (with the machine's own Debian mirror), become OCI
images with umoci, and are stored as OCI archives in ``~/.cache/readiness-gate-sidecar/images/``,
named after a digest of their inputs (package list, image config, Dockerfile and build context,
the base's digest): a change rebuilds exactly what it affects. ``RealNode`` imports the archives
with ``ctr images import``.

Builds need the network (Debian, PyPI): they run in the machine's network namespace and in private
mount namespaces (with a tmpfs over ``/var/lib``, where buildah would keep a cache), so nothing is
left outside the cache, also when a build is interrupted.

Run ``python -m tests.harness.images`` to build them ahead of time with visible progress.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from tests.harness import netns
from tests.harness.binaries import _exclusive, cache_root

ROOT = Path(__file__).resolve().parents[2]
SOURCES = Path(__file__).resolve().parent / "imagesrc"
SUITE = "bookworm"
# Bump to rebuild every image (a change of how they are built that their inputs do not show).
RECIPE_VERSION = "1"
# The build context the Dockerfile sees: its .dockerignore allow-list.
AGENT_CONTEXT = ("pyproject.toml", "README.md", "sidecar")
IMAGE_PREFIX = "localhost/readiness-gate-sidecar-tests"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Documentation, manual pages and translations stay out of the Debian images.
_DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
)
_MMDEBSTRAP_OPTIONS = (
    "--variant=essential",
    '--aptopt=APT::Install-Recommends "false"',
    # Java's postinst links its manual pages, whose directory the path-exclude leaves out.
    '--essential-hook=mkdir -p "$1/usr/share/man/man1"',
    *(f"--dpkgopt={option}" for option in _DPKG_OPTIONS),
)
_HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class Image:
    """An OCI archive ready for ``ctr images import``, and what tests need to know about it."""

    name: str  # the full reference containerd stores it under
    archive: Path
    user: str = ""  # the image's numeric USER ("uid:gid"), empty for root


@dataclass(frozen=True, slots=True, kw_only=True)
class Images:
    pause: Image
    agent: Image
    tomcat: Image
    redis: Image
    pause_binary: Path  # also the init of the real node's private PID namespace

    def for_node(self) -> tuple[Image, ...]:
        return (self.pause, self.agent, self.tomcat, self.redis)


@dataclass(frozen=True, slots=True, kw_only=True)
class DebianImage:
    """A root filesystem of Debian packages and the OCI config to run it with."""

    name: str
    packages: tuple[str, ...]
    user: str = ""  # an account the packages create; the image runs as its numeric uid:gid
    env: tuple[str, ...] = ()
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    workdir: str = ""
    ports: tuple[str, ...] = ()


PYTHON = DebianImage(name="python", packages=("python3", "python3-venv"), cmd=("python3",))
TOMCAT = DebianImage(
    name="tomcat10",
    packages=("tomcat10",),
    user="tomcat",
    env=(
        "CATALINA_HOME=/usr/share/tomcat10",
        "CATALINA_BASE=/var/lib/tomcat10",
        "CATALINA_TMPDIR=/tmp",
        "JAVA_HOME=/usr/lib/jvm/default-java",
        # A small heap and the client compiler: a faster start on a small, busy machine.
        "JAVA_OPTS=-Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true",
    ),
    entrypoint=("/usr/share/tomcat10/bin/catalina.sh",),
    cmd=("run",),
    workdir="/var/lib/tomcat10",
    ports=("8080/tcp",),
)
REDIS = DebianImage(
    name="redis",
    packages=("redis-server",),
    user="redis",
    cmd=("redis-server",),
    workdir="/data",
    ports=("6379/tcp",),
)


# --- the cache -----------------------------------------------------------------------------------


def images_dir() -> Path:
    return cache_root() / "images"


def ensure_images(out: TextIO = sys.stderr) -> Images:
    """Every image the real node tier uses, building what is not cached yet."""
    directory = images_dir()
    directory.mkdir(parents=True, exist_ok=True)
    with _exclusive(directory / ".lock"):
        pause, pause_binary = _ensure_pause(directory, out)
        python_key = _digest(_debian_inputs(PYTHON))
        python = _ensure_debian(directory, PYTHON, python_key, out)
        agent = _ensure_agent(directory, python, python_key, out)
        redis = _ensure_debian(directory, REDIS, _digest(_debian_inputs(REDIS)), out)
        tomcat = _ensure_debian(directory, TOMCAT, _digest(_debian_inputs(TOMCAT)), out)
    return Images(pause=pause, agent=agent, tomcat=tomcat, redis=redis, pause_binary=pause_binary)


def _digest(parts: Iterable[bytes]) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()[:16]


def _cached(directory: Path, name: str, key: str) -> tuple[Path, Path]:
    return directory / f"{name}-{key}.tar", directory / f"{name}-{key}.json"


def _load(archive: Path, meta: Path) -> Image | None:
    if not (archive.is_file() and meta.is_file()):
        return None
    data = json.loads(meta.read_text())
    return Image(name=data["name"], archive=archive, user=data.get("user", ""))


def _store(image: Image, meta: Path, built_seconds: float) -> None:
    record = {"name": image.name, "user": image.user, "built_seconds": round(built_seconds, 1)}
    partial = meta.with_suffix(".partial")
    partial.write_text(json.dumps(record, indent=2) + "\n")
    partial.replace(meta)


@contextlib.contextmanager
def _workdir(directory: Path, name: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=f".build-{name}-", dir=directory))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _say(out: TextIO, message: str) -> None:
    print(f"[images] {message}", file=out, flush=True)


# --- pause ---------------------------------------------------------------------------------------


def _ensure_pause(directory: Path, out: TextIO) -> tuple[Image, Path]:
    source = SOURCES / "pause.c"
    key = _digest([source.read_bytes(), b"gcc -static -Os -s"])
    archive, meta = _cached(directory, "pause", key)
    binary = directory / f"pause-{key}.bin"
    image = _load(archive, meta)
    if image is not None and binary.is_file():
        return image, binary
    started = time.monotonic()
    _say(out, "building the pause image (a static C program)")
    with _workdir(directory, "pause") as work:
        rootfs = work / "rootfs"
        rootfs.mkdir()
        _run(["gcc", "-static", "-Os", "-s", "-o", str(rootfs / "pause"), str(source)], out)
        layer = work / "layer.tar"
        with tarfile.open(layer, "w") as tar:
            tar.add(rootfs / "pause", arcname="pause", filter=_root_owned)
        name = f"{IMAGE_PREFIX}/pause:{key}"
        _oci_archive(
            work, layer, name, archive,
            config=["--config.entrypoint=/pause", "--config.user=65535:65535"], out=out,
        )  # fmt: skip
        shutil.copy2(rootfs / "pause", binary)
    image = Image(name=name, archive=archive, user="65535:65535")
    _store(image, meta, time.monotonic() - started)
    return image, binary


def _root_owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


# --- Debian images -------------------------------------------------------------------------------


def _debian_inputs(recipe: DebianImage) -> list[bytes]:
    options = [option.encode() for option in _MMDEBSTRAP_OPTIONS]
    return [SUITE.encode(), json.dumps(asdict(recipe), sort_keys=True).encode(), *options]


def _ensure_debian(directory: Path, recipe: DebianImage, key: str, out: TextIO) -> Image:
    archive, meta = _cached(directory, recipe.name, key)
    image = _load(archive, meta)
    if image is not None:
        return image
    started = time.monotonic()
    _say(
        out,
        f"building {recipe.name} from Debian {SUITE} packages ({', '.join(recipe.packages)}) "
        "with mmdebstrap; first run only",
    )
    with _workdir(directory, recipe.name) as work:
        rootfs = work / "rootfs.tar"
        _mmdebstrap(work, recipe.packages, rootfs, out, label=recipe.name)
        user = _numeric_user(rootfs, recipe.user) if recipe.user else ""
        config = [f"--config.env={PATH_ENV}", "--config.env=LANG=C.UTF-8"]
        config += [f"--config.env={env}" for env in recipe.env]
        config += [f"--config.entrypoint={arg}" for arg in recipe.entrypoint]
        config += [f"--config.cmd={arg}" for arg in recipe.cmd]
        config += [f"--config.exposedports={port}" for port in recipe.ports]
        if recipe.workdir:
            config.append(f"--config.workingdir={recipe.workdir}")
        if user:
            config.append(f"--config.user={user}")
        name = f"{IMAGE_PREFIX}/{recipe.name}:{key}"
        _oci_archive(work, rootfs, name, archive, config=config, out=out)
    image = Image(name=name, archive=archive, user=user)
    _store(image, meta, time.monotonic() - started)
    _say(out, f"built {recipe.name} in {time.monotonic() - started:.0f} s")
    return image


def _mmdebstrap(
    work: Path, packages: Sequence[str], target: Path, out: TextIO, *, label: str
) -> None:
    tmp = work / "tmp"
    tmp.mkdir()
    argv = [
        "unshare", "--mount", "--propagation", "private", "--",
        "mmdebstrap", f"--include={','.join(packages)}", *_MMDEBSTRAP_OPTIONS,
        SUITE, str(target), "-",
    ]  # fmt: skip
    _run(
        netns.host_network_command(argv),
        out,
        input_text=debian_sources(),
        env={**os.environ, "TMPDIR": str(tmp)},
        show=lambda line: line.startswith(("I: downloading", "I: installing", "I: success")),
        label=label,
    )


def debian_sources(sources_dir: Path = Path("/etc/apt")) -> str:
    """The machine's own Debian mirror entries for SUITE (and its updates and security suites).

    mmdebstrap reads them from standard input, so the images come from the same mirror as the
    machine's own packages.
    """
    wanted = {SUITE, f"{SUITE}-updates", f"{SUITE}-security"}
    entries: list[tuple[str, str]] = []
    candidates = [sources_dir / "sources.list", *sources_dir.glob("sources.list.d/*")]
    for path in sorted(p for p in candidates if p.is_file()):
        if path.suffix == ".sources":
            entries += _deb822_entries(path.read_text())
        elif path.name == "sources.list" or path.suffix == ".list":
            entries += _one_line_entries(path.read_text())
    lines = sorted({f"deb {uri} {suite} main" for uri, suite in entries if suite in wanted})
    if not any(line.endswith(f" {SUITE} main") for line in lines):
        raise ImageBuildError(
            f"the machine's apt sources ({sources_dir}) list no Debian '{SUITE}' suite: the real "
            f"node's images are built from Debian {SUITE} packages (a Debian 12 machine has it)"
        )
    return "\n".join(lines) + "\n"


def _deb822_entries(text: str) -> list[tuple[str, str]]:
    entries = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[0].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        if "main" not in fields.get("components", "").split():
            continue
        for uri in fields.get("uris", "").split():
            entries += [(uri, suite) for suite in fields.get("suites", "").split()]
    return entries


def _one_line_entries(text: str) -> list[tuple[str, str]]:
    entries = []
    for line in text.splitlines():
        words = re.sub(r"\[[^\]]*\]", "", line.split("#", 1)[0]).split()
        if len(words) >= 4 and words[0] == "deb" and "main" in words[3:]:
            entries.append((words[1], words[2]))
    return entries


def _numeric_user(rootfs: Path, account: str) -> str:
    """``uid:gid`` of ``account`` in the root filesystem (runAsNonRoot needs a numeric USER)."""
    with tarfile.open(rootfs) as tar:
        member = tar.extractfile("./etc/passwd")
        if member is None:
            raise ImageBuildError(f"{rootfs} has no /etc/passwd")
        for line in member.read().decode().splitlines():
            fields = line.split(":")
            if fields[0] == account:
                return f"{fields[2]}:{fields[3]}"
    raise ImageBuildError(f"the packages created no account {account!r}")


# --- the agent: the project's Dockerfile ---------------------------------------------------------


def agent_version() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version: str = project["version"]
    return version


def _context_files() -> list[Path]:
    files: list[Path] = []
    for name in AGENT_CONTEXT:
        path = ROOT / name
        if path.is_dir():
            files += sorted(
                p for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix not in {".pyc", ".pyo"}
            )  # fmt: skip
        else:
            files.append(path)
    return files


def _agent_inputs(base_key: str) -> list[bytes]:
    parts = [
        base_key.encode(),
        (ROOT / "Dockerfile").read_bytes(),
        (ROOT / ".dockerignore").read_bytes(),
    ]
    for path in _context_files():
        parts += [str(path.relative_to(ROOT)).encode(), path.read_bytes()]
    return parts


def _ensure_agent(directory: Path, base: Image, base_key: str, out: TextIO) -> Image:
    key = _digest(_agent_inputs(base_key))
    archive, meta = _cached(directory, "agent", key)
    image = _load(archive, meta)
    if image is not None:
        return image
    started = time.monotonic()
    version = agent_version()
    name = f"docker.io/library/readiness-gate-sidecar:{version}"
    _say(
        out,
        "building the agent image from ./Dockerfile with buildah (FROM the Debian python3 base)",
    )
    with _workdir(directory, "agent") as work:
        context = work / "context"
        for path in _context_files():
            target = context / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        shutil.copy2(ROOT / "Dockerfile", context / "Dockerfile")
        shutil.copy2(ROOT / ".dockerignore", context / ".dockerignore")
        buildah = Buildah(work)
        base_name = f"{IMAGE_PREFIX}/python:3.11-{base_key}"
        buildah.load_oci_archive(base.archive, base_name, out)
        buildah.run(
            [
                "bud", f"--signature-policy={buildah.policy}", "--pull=never",
                "--network=host", "--isolation=chroot", "--layers=false",
                *_ca_bundle_mount(),
                f"--build-arg=PYTHON_IMAGE={base_name}", f"--build-arg=VERSION={version}",
                f"--build-arg=REVISION=tests-{key}",
                f"--build-arg=CREATED={time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}",
                f"--tag={name}", f"--file={context / 'Dockerfile'}", str(context),
            ],
            out, network=True, label="agent",
            show=lambda line: bool(re.match(r"\[\d/\d\] STEP \d+/\d+: (FROM|RUN|COPY)", line)),
        )  # fmt: skip
        partial = work / "agent.tar"
        buildah.run(
            ["push", f"--signature-policy={buildah.policy}", name, f"oci-archive:{partial}:{name}"],
            out,
        )
        _annotate_name(partial, name, archive)
    image = Image(name=name, archive=archive, user="65532:65532")
    _store(image, meta, time.monotonic() - started)
    _say(out, f"built the agent image in {time.monotonic() - started:.0f} s")
    return image


def _ca_bundle_mount() -> list[str]:
    """The machine's CA bundle over the base's own, for pip in RUN steps (no stub left behind).

    Debian's pip trusts /etc/ssl/certs/ca-certificates.crt; the bundle that pip on this machine is
    told to trust (PIP_CERT, e.g. a proxy's CA) is mounted there, read-only, for the build only.
    """
    bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE") or _HOST_CA_BUNDLE)
    if not bundle.is_file():
        return []
    return [f"--volume={bundle.resolve()}:{_HOST_CA_BUNDLE}:ro"]


@dataclass(slots=True)
class Buildah:
    """buildah with its storage in a throw-away directory and a private mount namespace."""

    work: Path
    policy: Path = field(init=False)

    def __post_init__(self) -> None:
        self.policy = self.work / "policy.json"
        self.policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}\n')
        (self.work / "tmp").mkdir(exist_ok=True)

    def run(
        self,
        args: list[str],
        out: TextIO,
        *,
        network: bool = False,
        label: str = "buildah",
        show: Callable[[str], bool] = lambda _: False,
        layout: Path | None = None,
    ) -> str:
        """buildah ``args``; ``layout`` is bind-mounted on /mnt (a path that makes a valid name).

        buildah keeps a cache in /var/lib/containers whatever its --root: a tmpfs takes it.
        """
        setup = "mount -t tmpfs -o size=64m tmpfs /var/lib"
        if layout is not None:
            setup += f" && mount --bind {layout} /mnt"
        argv = [
            "unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            setup + ' && exec "$0" "$@"',
            "buildah", f"--root={self.work / 'storage'}", f"--runroot={self.work / 'run'}",
            "--storage-driver=overlay", *args,
        ]  # fmt: skip
        if network:
            argv = netns.host_network_command(argv)
        env = {**os.environ, "TMPDIR": str(self.work / "tmp")}
        return _run(argv, out, env=env, show=show, label=label)

    def load_oci_archive(self, archive: Path, name: str, out: TextIO) -> None:
        layout = self.work / "base-layout"
        layout.mkdir()
        with tarfile.open(archive) as tar:
            tar.extractall(layout, filter="data")
        pulled = self.run(  # the layout's one image
            ["pull", f"--signature-policy={self.policy}", "--quiet", "oci:/mnt"],
            out,
            layout=layout,
        )
        self.run(["tag", pulled.split()[-1], name], out)


# --- OCI layouts and archives --------------------------------------------------------------------


def _oci_archive(
    work: Path, layer: Path, name: str, archive: Path, *, config: list[str], out: TextIO
) -> None:
    """One-layer OCI image from a root filesystem tarball (umoci), saved as an OCI archive."""
    layout = work / "layout"
    tag = name.rsplit(":", 1)[1]
    image = f"{layout}:{tag}"
    _run(["umoci", "init", f"--layout={layout}"], out)
    _run(["umoci", "new", f"--image={image}"], out)
    _run(["umoci", "raw", "add-layer", f"--image={image}", str(layer)], out)
    _run(
        ["umoci", "config", f"--image={image}", "--author=readiness-gate-sidecar tests", *config],
        out,
    )
    _run(["umoci", "gc", f"--layout={layout}"], out)
    partial = work / "image.tar"
    with tarfile.open(partial, "w") as tar:
        for entry in sorted(layout.iterdir()):
            tar.add(entry, arcname=entry.name, filter=_root_owned)
    _annotate_name(partial, name, archive)


def _annotate_name(source: Path, name: str, archive: Path) -> None:
    """Copy an OCI archive to ``archive`` with ``name`` as its one image's reference.

    ``ctr images import`` names an image after ``io.containerd.image.name``; buildah and umoci
    write only ``org.opencontainers.image.ref.name`` (umoci: a bare tag).
    """
    partial = archive.with_suffix(".partial")
    with tarfile.open(source) as src, tarfile.open(partial, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member) if member.isfile() else None
            if member.name.lstrip("./") == "index.json" and data is not None:
                index = json.loads(data.read())
                (manifest,) = index["manifests"]
                annotations = manifest.setdefault("annotations", {})
                annotations["io.containerd.image.name"] = name
                annotations["org.opencontainers.image.ref.name"] = name
                body = json.dumps(index).encode()
                member.size = len(body)
                dst.addfile(member, _bytes_reader(body))
            else:
                dst.addfile(member, data)
    partial.replace(archive)


def _bytes_reader(body: bytes) -> io.BytesIO:
    return io.BytesIO(body)


# --- running the tools ---------------------------------------------------------------------------


def _run(
    argv: list[str],
    out: TextIO,
    *,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
    show: Callable[[str], bool] = lambda _: False,
    label: str = "",
    timeout: float = 1800,
) -> str:
    """Run a build tool; echo the lines ``show`` picks, with a heartbeat; fail with its tail."""
    started = time.monotonic()
    lines: list[str] = []
    done = threading.Event()

    def heartbeat() -> None:
        while not done.wait(30):
            _say(out, f"{label or argv[0]}: still working, {time.monotonic() - started:.0f} s")

    ticker = threading.Thread(target=heartbeat, daemon=True)
    ticker.start()
    with subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if input_text is not None else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    ) as process:
        try:
            if input_text is not None:
                assert process.stdin is not None
                process.stdin.write(input_text)
                process.stdin.close()
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line.rstrip("\n"))
                if show(lines[-1]):
                    _say(out, f"{label}: {lines[-1][:150]}")
            code = process.wait(timeout)
        finally:
            done.set()
            ticker.join()
            if process.poll() is None:
                process.kill()
                process.wait()
    if code != 0:
        errors = [line for line in lines[:-40] if re.search(r"\berror\b|^E: ", line, re.I)]
        tail = "\n".join([*errors[-20:], "...", *lines[-40:]])
        raise ImageBuildError(f"{' '.join(argv[:8])} ... failed ({code}):\n{tail}")
    return "\n".join(lines)


def main() -> None:
    started = time.monotonic()
    images = ensure_images()
    for image in images.for_node():
        size = image.archive.stat().st_size / 2**20
        print(f"  {image.name:<78} {size:7.1f} MiB", file=sys.stderr)
    print(f"[images] ready after {time.monotonic() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
