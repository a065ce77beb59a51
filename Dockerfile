# syntax=docker/dockerfile:1
#
# readiness-gate-sidecar: a small, non-root, read-only-root-filesystem-friendly image.
#
#   docker build -t readiness-gate-sidecar:0.1.0 \
#     --build-arg VERSION=0.1.0 --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" .
#
# The builder and the runtime stage MUST use the same Python image: the virtual environment is
# copied across as it is, and its interpreter links to /usr/local/bin/python3 of the base. Pin the
# base by digest in your CI (python:3.11-slim@sha256:...) for bit-for-bit rebuilds.
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

# A virtual environment without pip: the system pip installs into it (pip --python), so neither
# pip nor the build front end (the same pin as the test extra) ends up in the image.
RUN python -m venv --without-pip /opt/venv \
    && python -m pip install build==1.3.0

# Layer 1, the dependencies: rebuilt only when pyproject.toml changes, not on every code change.
# Wheels only (--only-binary): nothing is compiled, so no compiler is needed anywhere.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && python -m pip --python /opt/venv/bin/python install --only-binary=:all: -r /tmp/requirements.txt

# Layer 2, the project: build the wheel and install it alone, then compile everything.
COPY README.md ./
COPY sidecar ./sidecar
RUN python -m build --wheel --outdir /dist . \
    && python -m pip --python /opt/venv/bin/python install --no-deps --only-binary=:all: /dist/*.whl \
    && python -m compileall -q -f -j 0 --invalidation-mode unchecked-hash /opt/venv/lib

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

# No installer or build tool at run time: the base image's pip, setuptools and wheel go. The
# standard library is compiled here (the official images ship few or no .pyc files): with a
# read-only root filesystem nothing can be compiled at start-up, and nothing needs to be.
RUN python -m pip uninstall --yes --no-input pip setuptools wheel \
    && python -m compileall -q -j 0 -x '/(test|tests|idlelib|tkinter|turtledemo|ensurepip)/' \
        /usr/local/lib/python3.11

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

# Numeric, so that runAsNonRoot can verify it without an /etc/passwd entry.
USER 65532:65532

EXPOSE 9779

ENTRYPOINT ["readiness-gate-sidecar"]
