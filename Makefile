# One entry point for tooling. `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.DEFAULT_GOAL := help
.PHONY: help venv demo test test-stress unit integration lint format bench emulator clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

venv: $(STAMP) ## Create or update the virtual environment (.venv)

demo: $(STAMP) ## Run the main job on embedded defaults: emulator, Redis, worker, beat, a tour
	@scripts/ensure-redis
	$(BIN)/bridge demo

test: $(STAMP) ## Lint, type-check and run every test (finds or starts Redis and RabbitMQ)
	@scripts/ensure-redis
	@VENV=$(VENV) scripts/ensure-promtool
	@scripts/ensure-rabbitmq
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/pytest

test-stress: $(STAMP) ## `CI=true make test` three times in a row with a CPU hog on one core
	@scripts/test-stress

unit: $(STAMP) ## Only the fast unit tier (no sockets)
	@VENV=$(VENV) scripts/ensure-promtool
	$(BIN)/pytest -m "not integration"

integration: $(STAMP) ## Only the integration tier
	@scripts/ensure-redis
	@scripts/ensure-rabbitmq
	$(BIN)/pytest -m integration

lint: $(STAMP) ## ruff (lint + format check), mypy strict and the import contracts
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: $(STAMP) ## Apply ruff's formatter and safe fixes
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: $(STAMP) ## Run the benchmarks in bench/ and print their report
	@scripts/ensure-redis
	$(BIN)/python -m bench

emulator: $(STAMP) ## Start the emulator on 127.0.0.1:8000
	$(BIN)/bridge emulator

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
