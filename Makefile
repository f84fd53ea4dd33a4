# BFC Payments — the two commands of the quick start are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test stop install lint unit status bench browser

run: install ## create .venv, install, start everything (idempotent)
	$(BIN)/bfc up

stop: ## stop everything `make run` started; data under .stack/ is kept
	@if [ -x $(BIN)/bfc ]; then $(BIN)/bfc down; fi

status:
	$(BIN)/bfc status

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: install ## ruff, mypy (strict for app code), import-linter contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: install ## the fast tests only, no stack
	$(BIN)/pytest tests/unit tests/workflows

# Debian's Chromium for the Web UI test (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "chromium is missing: sudo apt-get install chromium (the Web UI test skips without it)"; fi; }

test: lint browser ## the whole suite; starts the stack it needs and stops what it started
	$(BIN)/pytest

bench: install ## benchmarks against the running stack (`make run` first); never a test
	$(BIN)/python -m bench.ledger

.PHONY: bench-payments
bench-payments: install ## payments/s through the API next to a bare Temporal workflow (`make run` first)
	$(BIN)/python -m bench.payments $(ARGS)
