# `make test` works on a fresh machine: it installs what the suite needs (Debian packages when
# run as root, a private virtualenv with the project and its test tools), lints, type-checks and
# runs the tests.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: test lint typecheck pytest venv system-deps demo devcluster bench clean

test: venv system-deps lint typecheck pytest

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# kubectl is the independent client of the emulator smoke test.
system-deps:
	@if ! command -v kubectl >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq kubernetes-client >/dev/null; \
	  else echo "kubectl missing and not root: the kubectl smoke test will be skipped"; fi; \
	fi

lint: venv
	$(BIN)/ruff check service tests benchmarks
	$(BIN)/ruff format --check service tests benchmarks

typecheck: venv
	$(BIN)/mypy service

pytest: venv
	$(BIN)/pytest

devcluster: venv
	$(BIN)/kpack-image-builder devcluster --port 8443 --kubeconfig-out devcluster.kubeconfig

bench: venv
	$(BIN)/python benchmarks/emulator.py

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
