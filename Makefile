# Two commands on a fresh machine: `make run` (API + page on the shipped model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
API_PORT ?= 5000
PAGE_PORT ?= 8501
BUNDLE := trained_model/tomato_leaf_lite0.pt
# one stamp per shipped bundle (its sha256): a new bundle gets its ONNX graph exported again at install time
ENGINE_STAMP := $(VENV)/.engine-$(shell sha256sum $(BUNDLE) 2>/dev/null | cut -c1-16)

.PHONY: deps install engine bench-deps peers-venv browser proxy redis run api page cluster test smoke bench card clean reload

$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

deps: $(VENV)/.installed

# The CPU engine (ONNX graph) of the shipped bundle, exported here instead of at the first server start (~10-30 s),
# into the cache the server reads; each server start still checks it against eager PyTorch.
$(ENGINE_STAMP): $(BUNDLE) inference/engines.py inference/export.py $(VENV)/.installed
	$(PY) -m inference.export --model $(BUNDLE)
	touch $@

engine: $(ENGINE_STAMP)

install: deps engine

$(VENV)/.installed-bench: bench/requirements.txt $(VENV)/.installed
	$(PY) -m pip install -q -r bench/requirements.txt
	touch $@

bench-deps: $(VENV)/.installed-bench  ## TorchServe and locust: benchmarks and their tests

# The peers of issue 19 (LitServe, Ray Serve, BentoML) in a venv of their own: the product's venv and CI never see them
PEERS_VENV := .venv-peers
$(PEERS_VENV)/.installed: bench/requirements-peers.txt
	python3 -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/pip install -q -r bench/requirements-peers.txt
	touch $@

# PyTriton apart: nvidia-pytriton 0.7 requires numpy<2 (the product and the other peers pin numpy 2.4.6)
PYTRITON_VENV := .venv-pytriton
$(PYTRITON_VENV)/.installed: bench/requirements-pytriton.txt
	python3 -m venv $(PYTRITON_VENV)
	$(PYTRITON_VENV)/bin/pip install -q -r bench/requirements-pytriton.txt
	touch $@

peers-venv: $(PEERS_VENV)/.installed $(PYTRITON_VENV)/.installed  ## then: $(PY) -m bench.run --systems ours,litserve,...

browser:  ## Debian's Chromium + ChromeDriver for the page's end-to-end test
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

proxy:  ## Debian's nginx for the reverse-proxy tests (deploy/nginx.conf: slow clients, JSON refusals)
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null)

redis:  ## Debian's redis-server: the job queue's broker and store (tests start their own on a free port)
	@command -v redis-server >/dev/null || test -x /usr/bin/redis-server || \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null)

api: install
	$(PY) flask_server.py --port $(API_PORT)

page: deps  ## settings in .streamlit/config.toml
	TOMATO_API_URL=http://127.0.0.1:$(API_PORT) $(VENV)/bin/streamlit run streamlit.py --server.port $(PAGE_PORT)

run: install  ## API on :5000 and the page on :8501; one Ctrl-C stops both (run_all.py)
	@$(PY) run_all.py --api-port $(API_PORT) --page-port $(PAGE_PORT)

test: deps bench-deps browser proxy redis  ## the tests export into their own temporary cache: no engine step
	$(VENV)/bin/pytest

bench: bench-deps  ## the full side-by-side benchmark (about 25 minutes; run it on a quiet machine)
	$(PY) -m bench.run --duration 20 --out BENCHMARKS.md

CANDIDATES := trained_model/candidates
card: install  ## redraw trained_model/MODEL_CARD.md from the evaluation files (after `python -m model.evaluate`)
	$(PY) -m model.card --shipped trained_model/tomato_leaf_lite0.pt --eval trained_model/evaluation.json \
	  --reject trained_model/reject/reject.json --explain trained_model/explain.json \
	  --candidate "Lite0 160 px + leaf head (shipped, 2.2.0): 2.1.0's network, leaf score from energy + leaf head=trained_model/evaluation.json" \
	  --candidate "Lite0 160 px + leaf head (2.1.0), 2.0.0 fine-tuned on all photos, every layer; leaf score from energy=$(CANDIDATES)/lite0_160px_2.1.0.json" \
	  --candidate "Lite0 160 px + leaf head (2.0.0), fine-tuned from 1.1.0 with negatives, 8 blocks frozen=$(CANDIDATES)/lite0_160px_2.0.0.json" \
	  --candidate "Lite0 160 px (1.1.0, shipped before), 16 epochs from ImageNet=$(CANDIDATES)/lite0_160px_1.1.0.json" \
	  --candidate "Lite0 160 px, 6 epochs from ImageNet + 4 at a lower rate (1.0.0)=$(CANDIDATES)/lite0_160px_two_stage.json" \
	  --candidate "Lite0 192 px, +3 epochs at 192 px from 1.0.0=$(CANDIDATES)/lite0_192px.json" \
	  --candidate "Lite0 160 px, stage 1 only (6 epochs from ImageNet)=$(CANDIDATES)/lite0_160px_stage1.json" \
	  --candidate "Lite0 128 px, +1 epoch from stage 1=$(CANDIDATES)/lite0_128px.json" \
	  --choice-file $(CANDIDATES)/choice.md --out trained_model/MODEL_CARD.md

# Zero-downtime model swap: replace $(BUNDLE) (or the file the server's --model names) with the new bundle, then
# `make reload`: its ONNX graph is exported here first, then every worker loads it in place (serving/swap.py);
# a bad bundle is refused and the old one keeps serving. Rollback: put the old file back, `make reload` again.
reload: engine
	$(PY) -m serving.reload --url http://127.0.0.1:$(API_PORT)

JOB_WORKERS ?= 2
REDIS_PORT ?= 6379
cluster: install redis  ## bulk jobs locally: redis-server + the API on API_PORT + JOB_WORKERS model workers; Ctrl-C stops all
	@$(PY) -m jobs.cluster --api-port $(API_PORT) --redis-port $(REDIS_PORT) --workers $(JOB_WORKERS)

smoke: deps  ## flask_test.py against a server already running on API_PORT
	$(PY) flask_test.py --url http://127.0.0.1:$(API_PORT)

clean:
	rm -rf $(VENV) .pytest_cache artifacts .cluster
