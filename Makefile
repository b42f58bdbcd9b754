# One Makefile for developers and CI (.ci/run calls these same targets).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help install system-deps demo test test-unit test-integration test-system test-fast test-durations \
	lint format \
	bench clean

help:
	@echo "make demo   - run deskpulse on an embedded broker + Redis with simulated traffic"
	@echo "make test   - install what is missing and run the whole test suite"
	@echo "make lint   - ruff format --check, ruff check, mypy, import-linter (the layers)"
	@echo "make bench  - run the benchmarks and rewrite BENCHMARKS.md"
	@echo "make test-unit, test-integration, test-system - one tier of the tests"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP) system-deps

# redis-server for the embedded stack and the tests; Prometheus and Alertmanager (with
# promtool and amtool) for the tests of the shipped rules and Alertmanager configuration;
# chromium for the wallboard's browser tests (driven by Playwright, never downloaded by it).
system-deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v amtool >/dev/null || missing="$$missing prometheus-alertmanager"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: install
	$(BIN)/deskpulse demo

# Tests run in PYTEST_WORKERS processes (pytest-xdist), each with a broker and a redis-server
# of its own; most of a system test's time is waiting on workers, so more processes than
# cores pay. tests/scheduling.py hands them out: tests sharing a module fixture together,
# the others one by one, the longest first.
PYTEST_WORKERS ?= 6
# The suite starts some 500 Python processes (workers, their engine processes, CLI calls)
# and each test process collects 2,000 tests: with PYTHONDONTWRITEBYTECODE, which some
# shells set, each compiles deskpulse's modules and the test modules all over again
# (collection 11 s a process instead of 4), so the tests write their bytecode whatever
# the shell says (into __pycache__/, ignored by git).
PYTEST_ENV := env -u PYTHONDONTWRITEBYTECODE
PYTEST := $(PYTEST_ENV) $(BIN)/pytest -n $(PYTEST_WORKERS)

# Tests marked `alone` hold a wall-clock budget a user sees (the demo's start within 30 s):
# they run after the others, one at a time, so the suite's own load does not decide them.
# Both runs always run; the target fails if either does.
test: install
	@status=0; \
	$(PYTEST) -m "not alone" tests || status=$$?; \
	$(PYTEST_ENV) $(BIN)/pytest -p no:xdist -m alone tests || status=$$?; \
	exit $$status

test-unit: install
	$(PYTEST) tests/unit

test-integration: install
	$(PYTEST) tests/integration

test-system: install
	$(PYTEST) tests/system

test-fast: install
	$(PYTEST) -m "not slow" tests

# After a whole `make test`: keep its durations for checkouts without pytest's cache (CI's
# fresh clone orders its run by them; tests/scheduling.py).
test-durations:
	$(BIN)/python -m tests.scheduling

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	@rm -rf build/typecheck && mkdir -p build/typecheck/deskpulse && \
	  for part in __init__.py py.typed; do ln -s ../../../deskpulse/$$part build/typecheck/deskpulse/$$part; done && \
	  for sub in models streams exporters; do ln -s ../../../$$sub build/typecheck/deskpulse/$$sub; done
	$(BIN)/mypy
	@# import-linter puts the current directory first on sys.path, so it runs in the link tree
	@# (whose deskpulse/ holds every subpackage), reading the contracts of pyproject.toml.
	ln -s ../../pyproject.toml build/typecheck/pyproject.toml
	cd build/typecheck && ../../$(BIN)/lint-imports --no-cache --no-logo

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

BENCH_STAMP := $(VENV)/.bench-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]'
	rm -f $(VENV)/.bench-*
	touch $(BENCH_STAMP)

bench: install $(BENCH_STAMP)
	@# bytecode as an installed package has it (pip compiles at install): a shell with
	@# PYTHONDONTWRITEBYTECODE would otherwise make every measured start compile the source
	$(BIN)/python -m compileall -q streams models exporters benchmark
	$(BIN)/python -m benchmark.run

clean:
	rm -rf $(VENV) .deskpulse .pytest_cache .mypy_cache .ruff_cache .hypothesis
