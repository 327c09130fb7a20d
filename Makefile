# Local development: make run (the whole pipeline), make test, make clean.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
# The first Python 3.13 that really runs (a pyenv shim on PATH may only print an error).
PY313 ?= $(shell for c in python3.13 /root/.pyenv/versions/3.13*/bin/python3.13 \
	"$$(pyenv root 2>/dev/null)"/versions/3.13*/bin/python3.13; do \
	"$$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' >/dev/null 2>&1 \
	&& { command -v "$$c"; break; }; done)
PYTEST_ARGS ?=
# apt-get needs root; elsewhere go through sudo.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

VENV := .venv
SQS_VENV := .venv-sqs
VENV_STAMP := $(VENV)/.installed
SQS_VENV_STAMP := $(SQS_VENV)/.installed

.PHONY: help deps .venv .venv-sqs redis-server run test clean distclean bench bench-deps wrk \
	compose-cli chromium test-upgrade docs deploy-tools monitoring-tools prometheus dashboard \
	vendor-uplot

help:
	@echo "make run        start SQS (LocalStack), Redis, worker, API, Flower and demo orders;"
	@echo "                MONITORING=1 also Prometheus with the alert rules"
	@echo "make test       run the test suite (PYTEST_ARGS='-k ...' to select)"
	@echo "make test-upgrade  the suite on the newest celery and kombu patch releases"
	@echo "make docs       build the documentation site into var/site (strict: any warning fails)"
	@echo "make dashboard  regenerate deploy/monitoring's Grafana dashboard from its Python"
	@echo "make bench      run every benchmark once, print the table (BENCH_ARGS='--orders N ...')"
	@echo "make deps       build .venv, .venv-sqs and install redis-server if missing"
	@echo "make clean      remove var/ (data and logs); distclean also removes the venvs"

deps: $(VENV_STAMP) $(SQS_VENV_STAMP) redis-server
.venv: $(VENV_STAMP)
.venv-sqs: $(SQS_VENV_STAMP)

# Main venv: the project, editable, with test and documentation tools; rebuilt when
# dependencies change.
$(VENV_STAMP): setup.cfg pyproject.toml requirements/constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "error: $(PYTHON) is older than Python 3.11; use make PYTHON=python3.11" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -c requirements/constraints.txt -e '.[test,docs]'
	touch $@

# LocalStack's venv: it needs Python 3.13 (it imports warnings.deprecated).
$(SQS_VENV_STAMP): requirements/sqs-server.txt
	@test -n "$(PY313)" || { echo "error: no Python 3.13 found (tried python3.13 on PATH and" \
		"pyenv's versions/3.13*); install one or pass PY313=/path/to/python3.13" >&2; exit 1; }
	$(PY313) -m venv $(SQS_VENV)
	$(SQS_VENV)/bin/pip install -r requirements/sqs-server.txt
	touch $@

# Debian's package may start its own service on 6379 (where there is an init system
# and no policy-rc.d forbids it); make run wants that port, so stop and disable it.
redis-server:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends redis-server && \
		if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now redis-server; \
		else \
			if service redis-server status >/dev/null 2>&1; then $(SUDO) service redis-server stop; fi; \
			$(SUDO) update-rc.d redis-server disable >/dev/null 2>&1 || true; \
		fi; }

# make bench: FastAPI and uvicorn for the peer API (bench/fastapi_peer.py) in the project's
# venv, and wrk, the load generator of the API benchmark.
BENCH_STAMP := $(VENV)/.bench-installed
BENCH_ARGS ?=

bench-deps: deps $(BENCH_STAMP) wrk

$(BENCH_STAMP): $(VENV_STAMP) setup.cfg requirements/constraints.txt
	$(VENV)/bin/pip install -c requirements/constraints.txt -e '.[test,docs,bench]'
	touch $@

wrk:
	@command -v wrk >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wrk; }

# One run, one table: printed, and written to bench/results/latest.md and latest.json.
bench: bench-deps
	$(VENV)/bin/python -m bench.run $(BENCH_ARGS)

# The site of docs/ (mkdocs.yml) into var/site; the configuration and API pages are generated
# from app/settings.py and the Flask app's OpenAPI document (docs/_hooks/reference.py).
# NO_MKDOCS_2_WARNING: Material's notice about MkDocs 2 is not a warning of this build.
docs: $(VENV_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict
# make test: cfn-lint, parliament, kubernetes-validate and check-jsonschema for tests/deploy
# (the template, its IAM policies and the Kubernetes manifests), in the project's venv.
DEPLOY_STAMP := $(VENV)/.deploy-installed

deploy-tools: $(DEPLOY_STAMP)

$(DEPLOY_STAMP): $(VENV_STAMP) setup.cfg requirements/constraints.txt
	$(VENV)/bin/pip install -c requirements/constraints.txt -e '.[test,docs,deploy]'
	touch $@

# make test: Debian's prometheus package (promtool and the server) for tests/monitoring, which
# unit-tests deploy/monitoring/rules.yml and runs a real Prometheus on a free port; grafanalib
# for the dashboard's generator. Like redis-server, the package's own service is stopped and
# disabled where an init system started it: the tests and compose run their own.
MONITORING_STAMP := $(VENV)/.monitoring-installed

monitoring-tools: $(MONITORING_STAMP) prometheus

$(MONITORING_STAMP): $(VENV_STAMP) setup.cfg requirements/constraints.txt
	$(VENV)/bin/pip install -c requirements/constraints.txt -e '.[test,docs,monitoring]'
	touch $@

prometheus:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends prometheus && \
		if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus; \
		else \
			if service prometheus status >/dev/null 2>&1; then $(SUDO) service prometheus stop; fi; \
			$(SUDO) update-rc.d prometheus disable >/dev/null 2>&1 || true; \
		fi; }

# deploy/monitoring/grafana/dashboards/orders-pipeline.json from deploy/monitoring/dashboard.py
# (tests/monitoring fails while the committed file differs).
dashboard: $(MONITORING_STAMP)
	$(VENV)/bin/python deploy/monitoring/dashboard.py

# uPlot for the API's /dashboard, from the npm registry (committed under web/static/vendor,
# so neither a clone nor the page needs npm or the internet; this target refreshes it).
UPLOT_VERSION = 1.6.32
vendor-uplot:
	rm -rf .uplot && mkdir .uplot && cd .uplot && npm pack --silent uplot@$(UPLOT_VERSION) && \
		tar xzf uplot-$(UPLOT_VERSION).tgz
	cp .uplot/package/dist/uPlot.iife.min.js .uplot/package/dist/uPlot.min.css \
		.uplot/package/LICENSE web/static/vendor/uplot/
	rm -rf .uplot

# exec: make's shell becomes orders-stack, so Ctrl-C reaches it and it cleans up.
# MONITORING=1 also starts Prometheus (Debian's package) with deploy/monitoring/rules.yml.
run: deps $(if $(filter 1 true yes on,$(MONITORING)),prometheus)
	exec $(VENV)/bin/orders-stack run

# bench-deps too: tests/bench smoke-runs the harness (wrk, the FastAPI peer) on a few orders;
# compose-cli: tests/test_compose.py has compose parse docker-compose.yml (no engine needed).
# chromium: tests/web/test_docs_browser.py opens /docs in a headless browser, offline,
# tests/docs/test_site_browser.py drives the documentation site in it (chromedriver), and
# tests/web/test_dashboard_browser.py the API's /dashboard.
# deploy-tools: tests/deploy lints the template and validates the manifests.
# monitoring-tools: tests/monitoring proves the alert rules with promtool and Prometheus.
test: bench-deps compose-cli chromium deploy-tools monitoring-tools
	$(VENV)/bin/pytest $(PYTEST_ARGS)

chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends chromium chromium-driver; }

# The suite against the newest patch releases of the pinned celery and kombu (~= the
# pins), in a throwaway venv: the pins and .venv stay as they are.
UPGRADE_VENV := var/upgrade-venv
CELERY_PIN := $(shell sed -n 's/^celery==//p' requirements/constraints.txt)
KOMBU_PIN := $(shell sed -n 's/^kombu==//p' requirements/constraints.txt)

test-upgrade: redis-server $(SQS_VENV_STAMP) wrk compose-cli prometheus
	rm -rf $(UPGRADE_VENV)
	$(PYTHON) -m venv $(UPGRADE_VENV)
	grep -vE '^(celery|kombu)==' requirements/constraints.txt > $(UPGRADE_VENV)/constraints.txt
	$(UPGRADE_VENV)/bin/pip install -c $(UPGRADE_VENV)/constraints.txt -e '.[test,docs,bench,deploy,monitoring]' \
		'celery~=$(CELERY_PIN)' 'kombu~=$(KOMBU_PIN)'
	$(UPGRADE_VENV)/bin/python -c 'import celery, kombu; \
		print("testing celery", celery.__version__, "and kombu", kombu.__version__)'
	$(UPGRADE_VENV)/bin/pytest $(PYTEST_ARGS)

compose-cli:
	@docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || { \
		$(SUDO) apt-get update && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y --no-install-recommends docker-compose; }

clean:
	rm -rf var

distclean: clean
	rm -rf $(VENV) $(SQS_VENV) *.egg-info
