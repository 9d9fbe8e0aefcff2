# nimbus-kubearmor. `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
SIEVE_ARGS ?=
IMG ?= ghcr.io/nimbus-kubearmor/reconciler
TAG ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# docker when it reaches an engine, else podman (which needs none)
CONTAINER_TOOL ?= $(shell docker info >/dev/null 2>&1 && echo docker || echo podman)
# Both stages' base: `debian` is made from Debian's archive (no registry needed, tests/image/base.py);
# python:3.11-slim is the Dockerfile's own, from the registry.
BASE_IMAGE ?= debian
# The Kubernetes release the local control plane is built from and the tests run on; empty: the
# newest supported (tests/controlplane/versions.py). Any release the Go module proxy serves, e.g.
# make e2e KUBERNETES_VERSION=v1.30.14 (each built once, cached by version).
KUBERNETES_VERSION ?=
export KUBERNETES_VERSION

.DEFAULT_GOAL := help
.PHONY: help venv lock controlplane prometheus container-tools tools test unit e2e faults soak sieve contention lint bench demo run render crds image push-image clean

help: ## List the targets with what each does
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# uv installs exactly what uv.lock says; it comes, pinned by hash, from PyPI into a cache shared
# by every clone (a fresh machine has none).
UV_VERSION := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' uv-requirements.txt)
UV_HOME ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/nimbus-kubearmor/uv-$(UV_VERSION)
UV := $(UV_HOME)/bin/uv
export UV_PYTHON_DOWNLOADS := never
# the image test exports uv.lock as the Dockerfile does (tests/image/locked.py)
export NIMBUS_KUBEARMOR_UV := $(UV)

$(UV):
	@echo ">> installing uv $(UV_VERSION) into $(UV_HOME) (once)"
	@mkdir -p $(dir $(UV_HOME)) && tmp=$$(mktemp -d $(UV_HOME).XXXXXX) && \
	  $(PYTHON) -m venv $$tmp && \
	  $$tmp/bin/python -m pip install --quiet --require-hashes -r uv-requirements.txt && \
	  { mv -T $$tmp $(UV_HOME) 2>/dev/null || rm -rf $$tmp; }

# --compile-bytecode, as pip does in the image: where PYTHONDONTWRITEBYTECODE is set (this
# machine), a venv without bytecode compiles every module it imports at every start.
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	@echo ">> creating $(VENV) with exactly the versions in uv.lock: the project and its test tools"
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --extra test --python $(PYTHON) --quiet \
	  --compile-bytecode
	@touch $@

venv: $(VENV)/.installed ## Create the virtualenv and install dependencies

controlplane: venv ## Build etcd, kube-apiserver, kube-controller-manager, kubectl of KUBERNETES_VERSION (cached)
	$(PY) -m tests.controlplane.assets build

tools: venv ## Build the tools tests run (helm) from the Go module proxy (cached by version)
	$(PY) -m tests.tools.helm build

prometheus: ## Install Debian's prometheus package (prometheus, promtool) if missing: tests run them
	@{ command -v prometheus && command -v promtool; } >/dev/null || { \
	  echo ">> installing Debian's prometheus package"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; }

container-tools: ## Install Debian's podman, mmdebstrap and runc if missing: tests build and run the image
	@{ command -v podman && command -v mmdebstrap && command -v runc; } >/dev/null || { \
	  echo ">> installing Debian's podman, mmdebstrap and runc"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    podman mmdebstrap runc; }

test: controlplane tools prometheus container-tools ## Run every test: unit, and end-to-end on a throwaway local control plane
	$(PY) -m pytest $(PYTEST_ARGS)

unit: venv prometheus ## Run the unit tests only (no control plane)
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# which end-to-end tests: E2E_MARK="e2e and not one_version" leaves out those whose subject is
# the same on every Kubernetes release (tests/conftest.py), as CI does on the oldest
E2E_MARK ?= e2e
e2e: controlplane tools prometheus container-tools ## Run the end-to-end tests only (on KUBERNETES_VERSION; E2E_MARK)
	$(PY) -m pytest -m "$(E2E_MARK)" $(PYTEST_ARGS)

faults: controlplane ## Run the fault-injection tests only
	$(PY) -m pytest -m faults $(PYTEST_ARGS)

CONTENTION_POLICIES ?= 300
contention: controlplane ## Status writes next to the Nimbus core and two other adapters: the share refused (CONTENTION_POLICIES)
	NIMBUS_CONTENTION_POLICIES=$(CONTENTION_POLICIES) $(PY) -m pytest -s tests/e2e/test_status_contention.py -k rarely $(PYTEST_ARGS)

lint: venv ## uv.lock matches pyproject.toml, ruff on everything, mypy --strict on reconciler/
	$(UV) lock --check --python $(PYTHON) --quiet
	$(PY) -m ruff check reconciler tests config
	$(PY) -m mypy

lock: $(UV) ## Update uv.lock after a change to pyproject.toml (LOCK_ARGS=--upgrade: newest allowed versions)
	$(UV) lock --python $(PYTHON) $(LOCK_ARGS)

soak: controlplane ## A long seeded randomized soak on its own control plane (SOAK_STEPS, SOAK_ARGS=--seed N)
	$(PY) -m tests.soak $(SOAK_ARGS)

sieve: controlplane ## Every perturbation point of the reference workload, after Sieve, on its own control plane (SIEVE_ARGS="--point P", --kind K)
	$(PY) -m tests.sieve $(SIEVE_ARGS)

bench: controlplane ## Benchmarks: print figures, write tests/bench/results.json (BENCH_SCALE, BENCH_ARGS=--quick)
	$(PY) -m tests.bench $(BENCH_ARGS)

demo: controlplane ## See it work: local control plane, sample policies, the reconciler repairing drift
	$(PY) -m tests.demo

run: venv ## Run the reconciler against the cluster in KUBECONFIG / ~/.kube/config
	$(PY) -m reconciler $(ARGS)

render: venv ## Print the KubeArmorPolicies for FILE (make render FILE=config/samples/...)
	$(PY) -m reconciler render -f $(FILE)

crds: venv ## Regenerate config/crd/bases from config/crd/generate.py
	$(PY) config/crd/generate.py

image: venv ## Build the container image as the tests do (IMG, TAG, CONTAINER_TOOL, BASE_IMAGE)
	$(PY) -m tests.image --tool $(CONTAINER_TOOL) --base $(BASE_IMAGE) --tag $(IMG):$(TAG)

push-image: ## Push the container image (IMG, TAG, CONTAINER_TOOL)
	$(CONTAINER_TOOL) push $(IMG):$(TAG)

clean: ## Remove the virtualenv and caches (not the control plane binaries)
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
