# Two commands do everything on a fresh machine (Python 3.11+, Go 1.26, root):
#   make demo    local control plane + legacy app + agent, the gate flipping in `kubectl get pods`
#   make test    lint, type checks, unit, end-to-end, fault, real-node and benchmark-smoke tests on
#                the newest pinned Kubernetes, then the tests marked all_versions on the oldest one
#   make matrix  the tests marked all_versions on every pinned Kubernetes version (tests/harness/k8s/)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: test matrix demo lint binaries binaries-all node unit e2e faults realnode bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

binaries: $(STAMP)
	$(BIN)/python -m tests.harness.binaries --with-helm --kube-version=newest --kube-version=oldest

binaries-all: $(STAMP)
	$(BIN)/python -m tests.harness.binaries --with-helm --kube-version=all

# The real node: Debian packages (apt-get, when missing), kubelet, containerd, images (cached).
node: $(STAMP)
	$(BIN)/python -m tests.harness.nodebuild

lint: $(STAMP)
	$(BIN)/ruff check sidecar tests scripts benchmarks
	$(BIN)/ruff format --check sidecar tests scripts benchmarks
	$(BIN)/mypy
	$(BIN)/hadolint Dockerfile

test: lint binaries node
	$(BIN)/pytest
	$(BIN)/pytest --kube-version=oldest -m all_versions

# Every version, even after a failure; the exit status says whether all passed.
matrix: binaries-all
	@status=0; for version in $$($(BIN)/python -m tests.harness.versions --minors); do \
	  echo "=== Kubernetes $$version"; \
	  $(BIN)/pytest --kube-version=$$version -m all_versions || status=1; \
	done; exit $$status

unit: $(STAMP)
	$(BIN)/pytest tests/unit

e2e: binaries
	$(BIN)/pytest tests/e2e

faults: binaries
	$(BIN)/pytest tests/faults

realnode: binaries node
	$(BIN)/pytest tests/node

demo: binaries
	$(BIN)/python -m scripts.demo

bench: binaries
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis dist build
