# Two commands matter: `make run` (the portal on embedded defaults) and `make test` (the full suite).
SHELL := /bin/bash
PY ?= python3
VENV := .venv
PYTHON := $(VENV)/bin/python
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

TEST_PG_PORT ?= 55432
TEST_REDIS_PORT ?= 56379
# Several checkouts may run the suite at once against the same servers: give each its own names.
TEST_DB_NAME ?= portal
TEST_REDIS_DB ?= 0
TEST_ENV := DATABASE_URL=postgres://postgres@127.0.0.1:$(TEST_PG_PORT)/$(TEST_DB_NAME) \
	CELERY_BROKER_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/$(TEST_REDIS_DB) \
	DJANGO_SETTINGS_MODULE=portal.settings.test
PYTEST_ARGS ?=

.PHONY: help venv run test lint fmt services services-down check-deploy clean bench keycloak

help:
	@echo "make run      start the portal (web, worker, beat) on embedded defaults at http://127.0.0.1:8000"
	@echo "make test     install everything needed and run the whole suite on PostgreSQL and Redis"
	@echo "make lint     ruff and the import contracts (pyproject.toml [tool.importlinter])"
	@echo "make testbed-up / testbed-down   the local Kubernetes testbed"

$(VENV)/.installed: pyproject.toml
	@test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

run: venv
	@bash scripts/run.sh

services:
	@bash scripts/services.sh up >/dev/null

services-down:
	@bash scripts/services.sh down

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

fmt: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

check-deploy: venv
	PORTAL_SECRET_KEY=$$(head -c 48 /dev/urandom | base64) PORTAL_ALLOWED_HOSTS=portal.example.com \
	DATABASE_URL=postgres://postgres@127.0.0.1:$(TEST_PG_PORT)/portal CELERY_BROKER_URL=redis://127.0.0.1:$(TEST_REDIS_PORT)/0 \
	PORTAL_CREDENTIALS_KEYS=$$($(PYTHON) -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
	PORTAL_METRICS_TOKEN=check-deploy DJANGO_SETTINGS_MODULE=portal.settings.production \
	$(PYTHON) manage.py check --deploy --fail-level WARNING

# Tests marked `cluster` run against a dedicated local testbed cluster (built from source on first
# use, reused after). PORTAL_TEST_KUBECONFIG=/path/to/kubeconfig runs them against your own cluster.
TEST_TESTBED_NAME ?= gpu-portal-test
# Simulated bring-up delay of elastic-pool nodes on the test cluster (make run keeps 45 s).
TEST_NODE_BRINGUP_SECONDS ?= 5

# Keycloak for the single sign-on tests: fetched with Maven and built for dev mode once (cached by version).
keycloak:
	@bash scripts/keycloak.sh install >/dev/null

test: venv services lint check-deploy keycloak $(if $(PORTAL_TEST_KUBECONFIG),,testbed-build)
	@set -eo pipefail; \
	kubeconfig="$${PORTAL_TEST_KUBECONFIG:-$$($(PYTHON) scripts/testbed/testbed.py up --name $(TEST_TESTBED_NAME) --node-bringup-seconds $(TEST_NODE_BRINGUP_SECONDS) | tail -n 1)}"; \
	echo "test cluster: $$kubeconfig"; \
	PORTAL_TEST_KUBECONFIG="$$kubeconfig" $(TEST_ENV) $(PYTHON) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf var/staticfiles .pytest_cache

# Benchmarks on dedicated testbed clusters (started and stopped by the run), the bench database and
# Redis db 12; writes docs/benchmarks.md and docs/benchmarks.json. BENCH_ARGS="--quick" for smaller sizes,
# "--only collector,api" for some sections. The API section drives wrk, installed with apt-get if missing.
BENCH_ARGS ?=

bench: venv services testbed-build
	@command -v wrk >/dev/null || { echo "apt-get install wrk"; export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk >/dev/null; }; }
	$(PYTHON) -m bench.run $(BENCH_ARGS)

include scripts/testbed/testbed.mk

# The testbed script runs on the venv's Python (PyYAML): a fresh clone's first command may be one of these.
testbed-up testbed-down testbed-status testbed-smoke: venv
