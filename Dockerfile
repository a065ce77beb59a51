# syntax=docker/dockerfile:1
#
# readiness-gate-sidecar: a small, non-root, read-only-root-filesystem-friendly image.
#
#   docker build -t readiness-gate-sidecar:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# PYTHON_IMAGE is the base of both stages: any image with a Python >= 3.11 `python3` on PATH and
# its standard `venv` module (with ensurepip). The default is the official python:3.11-slim; the
# real-node tests build one from Debian 12's python3 + python3-venv (tests/harness/images.py). No
# path below exists in only one of them: the interpreter is `python3` on PATH, the standard
# library's directory comes from sysconfig, and pip runs from a virtual environment of its own.
#
# The builder and the runtime stage MUST use the same Python image: the virtual environment is
# copied across as it is, and its interpreter links to the base's python3. Pin the base by digest
# in your CI (python:3.11-slim@sha256:...) for bit-for-bit rebuilds.
#
# tests/e2e/test_packaging.py performs these steps without Docker (wheel, venv, install, run):
# change them together.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /src

# The installer gets a virtual environment of its own (/opt/installer: pip, and the build front end
# at the same pin as the test extra); the application's environment (/opt/venv) gets no pip at all:
# the installer's pip installs into it from outside (pip --python). So neither pip nor the build
# front end ends up in the image, and no installer of the base image is needed.
RUN python3 -m venv /opt/installer \
    && /opt/installer/bin/python -m pip install build==1.3.0 \
    && python3 -m venv --without-pip /opt/venv

# Layer 1, the dependencies: rebuilt only when pyproject.toml changes, not on every code change.
# Wheels only (--only-binary): nothing is compiled, so no compiler is needed anywhere.
COPY pyproject.toml ./
RUN python3 -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && /opt/installer/bin/python -m pip --python /opt/venv/bin/python install --only-binary=:all: -r /tmp/requirements.txt

# Layer 2, the project: build the wheel and install it alone, then compile everything.
COPY README.md ./
COPY sidecar ./sidecar
RUN /opt/installer/bin/python -m build --wheel --outdir /dist . \
    && /opt/installer/bin/python -m pip --python /opt/venv/bin/python install --no-deps --only-binary=:all: /dist/*.whl \
    && /opt/venv/bin/python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG PYTHON_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

LABEL org.opencontainers.image.title="readiness-gate-sidecar" \
      org.opencontainers.image.description="Reports a legacy application's readiness through a Kubernetes Pod readiness gate." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${PYTHON_IMAGE}"

# No installer or build tool at run time: the base image's own pip, setuptools and wheel go (the
# official images have them; a distribution's python3 has none to remove). The standard library is
# compiled here (the official images ship few or no .pyc files): with a read-only root filesystem
# nothing can be compiled at start-up, and nothing needs to be.
RUN if python3 -m pip --version > /dev/null 2>&1; then \
        python3 -m pip uninstall --yes --no-input pip setuptools wheel; \
    fi \
    && python3 -m compileall -q -j 0 -x '/(test|tests|idlelib|tkinter|turtledemo|ensurepip)/' \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')"

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532

EXPOSE 9779

ENTRYPOINT ["readiness-gate-sidecar"]
