# driftwise_slack developer tasks. CI runs `make test` (through .ci/run).
#
#   make test                    install what the tests need, then run them all
#   make test PYTEST_ARGS='-k oauth -x'
#   make demo | bench | lint | clean

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PIP := $(PY) -m pip --disable-pip-version-check
PYTEST_WORKERS ?= 2
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv system-deps service-deps browser-deps test demo bench lint clean

help:
	@echo "make test    install everything the tests need and run them ($(PYTEST_WORKERS) workers)"
	@echo "make demo    run the reference host with the local Slack emulator"
	@echo "make bench   run the benchmarks"
	@echo "make lint    ruff + mypy"
	@echo "make venv    create/update $(VENV) only"
	@echo "make clean   remove $(VENV), caches and build output"

venv: $(STAMP)

# Re-installs only when the package metadata changed; otherwise this is instant.
$(STAMP): setup.cfg setup.py $(wildcard pyproject.toml)
	@if ! $(PY) -m pip --version >/dev/null 2>&1; then \
	    echo "==> Creating the virtualenv in $(VENV) with $$($(PYTHON) --version 2>&1)"; \
	    rm -rf $(VENV); \
	    bash .ci/make-venv "$(PYTHON)" "$(VENV)"; \
	fi
	@echo "==> Upgrading pip"
	@$(PIP) install --quiet --upgrade pip
	@echo "==> Installing driftwise_slack (editable) with its test and dev extras"
	@$(PIP) install --quiet -e '.[test,dev]'
	@touch $@
	@echo "==> Virtualenv ready: $(VENV)"

service-deps:
	@bash .ci/install-services

browser-deps:
	@bash .ci/install-browser

system-deps: service-deps browser-deps

# pytest exit code 5 means "no tests collected": that must fail, not pass quietly.
test: venv system-deps
	@echo "==> Running the tests with $(PYTEST_WORKERS) workers $(if $(PYTEST_ARGS),(args: $(PYTEST_ARGS)))"
	@rc=0; $(PY) -m pytest -n $(PYTEST_WORKERS) -p no:cacheprovider $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "!! pytest collected no tests: treating that as a failure"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then echo "!! tests failed (pytest exit code $$rc)"; fi; \
	exit $$rc

demo: venv
	@echo "==> Installing the demo extra (fakeredis for the in-process queue)"
	@$(PIP) install --quiet -e '.[demo]'
	@echo "==> Starting the demo (reference host + local Slack emulator); Ctrl-C stops it"
	@$(PY) -m driftwise_slack.reference_host.demo

bench: venv service-deps
	@echo "==> Running the benchmarks"
	@$(PY) -m benchmarks

lint: venv
	@echo "==> ruff"
	@$(PY) -m ruff check --line-length 100 --select E4,E7,E9,E501,F,W,B,I \
	    --config 'lint.isort.known-first-party=["driftwise_slack","services","processes","factories","delivery_helpers","browser","benchmarks","message_checks"]' \
	    driftwise_slack tests
	@echo "==> mypy (strict, settings in setup.cfg)"
	@$(PY) -m mypy

clean:
	@echo "==> Removing $(VENV), caches and build output"
	@rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache test-artifacts .services
	@find . -name __pycache__ -type d -prune -exec rm -rf {} +
