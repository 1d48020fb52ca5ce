# `make test` works on a fresh machine: it installs what the suite needs (Debian packages when
# run as root, a private virtualenv with the project and its test tools), lints, type-checks and
# runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: test lint typecheck pytest venv system-deps demo devcluster realcluster bench chaos manifests clean

test: venv system-deps lint typecheck pytest

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,sim]'
	touch $@

# Debian packages the tests use: kubectl (an independent client of the emulator), promtool (from
# prometheus, lints the /metrics exposition) and docker-registry (the real OCI registry the registry client
# is tested against), buildah and debootstrap (tests/test_image.py builds the image from a local Debian base
# and runs it as the chart's pod would). Tests that need a missing one skip and say why.
SYSTEM_DEPS = kubectl:kubernetes-client promtool:prometheus docker-registry:docker-registry \
              buildah:buildah debootstrap:debootstrap
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
	  command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else echo "missing Debian packages:$$missing (not root: the tests that need them will be skipped)"; fi; \
	fi

lint: venv
	$(BIN)/ruff check service simcluster tests benchmarks manifests images
	$(BIN)/ruff format --check service simcluster tests benchmarks manifests images

typecheck: venv
	$(BIN)/mypy service simcluster

pytest: venv
	$(BIN)/pytest

demo: venv
	$(BIN)/python -m simcluster demo

devcluster: venv
	$(BIN)/python -m simcluster devcluster --port 8443 --kubeconfig-out devcluster.kubeconfig --kpack

# The real control plane (kube-apiserver, kube-controller-manager, etcd; built from tests/controlplane/go.mod
# into ~/.cache/kpack-image-builder/ the first time, which needs Go), with kpack's CRDs and the project's,
# in the foreground; Ctrl-C stops it. docs/testing.md, "The real control plane".
realcluster: venv
	$(BIN)/python -m tests.controlplane run --kubeconfig-out realcluster.kubeconfig --crds

bench: venv
	$(BIN)/python benchmarks/emulator.py
	$(BIN)/python benchmarks/runtime.py
	$(BIN)/python benchmarks/converge.py --workloads 1000 --namespaces 10 --peer kopf

# The kustomize manifests are generated from the chart (docs/manifests.md); tests/test_manifests.py fails on drift.
manifests: venv
	$(BIN)/python manifests/generate.py

chaos: venv
	$(BIN)/python benchmarks/chaos.py --workloads 300 --replicas 3

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
