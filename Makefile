# Two entry points: `make demo` (install + run the main job on the embedded
# default) and `make test` (install + run the whole suite). Everything else
# is a helper of those two.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip -q --disable-pip-version-check
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install dev demo test test-fast test-containers lint bench clean

$(VENV)/.installed: requirements.txt requirements-nodeps.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -r requirements.txt
	$(PIP) install --no-deps -r requirements-nodeps.txt
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

$(VENV)/.dev-installed: $(VENV)/.installed requirements-dev.txt
	$(PIP) install -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev-installed

demo: install  # `make demo ARGS=--keep`: leave the stack (and its dashboard) up until Ctrl-C
	$(VENV)/bin/mmdlm demo $(ARGS)

test: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest tests --durations=30

test-fast: dev
	$(VENV)/bin/pytest tests -m "not slow"

# The images built from Debian packages and run as every role (root: installs docker.io, starts dockerd);
# part of `make test` too.
test-containers: dev
	$(VENV)/bin/pytest tests/containers -m containers

lint: dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: dev
	for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf var/ .pytest_cache
