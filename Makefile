# CapsNet: train -> export (verified ONNX) -> serve (BentoML + ONNX Runtime) -> load-test.
# `make serve` on a fresh machine does everything; `make test` runs the test suite.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
GRPC_PORT ?= 8001
HOST ?= 127.0.0.1

# Your own model: `make train` trains RUN, `make export` exports it into EXPORTED's folder, and every stage after
# that takes it through CAPSNET_MODEL (make serve CAPSNET_MODEL=artifacts).
RUN ?= runs/quick
EXPORTED ?= artifacts/capsnet.onnx
# The published weights' verified ONNX files (models/): `make publish` re-makes them.
PUBLISHED_ONNX := models/capsnet-mnist.onnx
# The model every stage takes (serve, build, container, loadtest, loadtest-pinned, replicas, peers, bench): the
# fp32 ONNX file, or the folder `python -m export` wrote it in, with its variants, decoder, record and card.
CAPSNET_MODEL ?= $(PUBLISHED_ONNX)
# Quick CPU model: one pass over 30,000 digits, about 7 minutes on 2 cores, about 98% test accuracy.
QUICK_TRAIN_ARGS ?= --epochs 1 --limit 30000
TRAIN_ARGS ?= $(QUICK_TRAIN_ARGS)
EXPORT_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup serve-setup publish web tools replicas peers soak peers-setup fuzz data train export serve loadtest loadtest-pinned build container container-gpu container-gpu-check container-run bench experiments docs-numbers gpu-stage \
        test test-quick clean help
help:
	@echo "make serve      a venv with the serving packages, then serve CAPSNET_MODEL (the published model) on $(HOST):$(PORT)"
	@echo "make test       run the test suite (make test-quick: the in-process part, for the inner loop)"
	@echo "make train      train RUN ($(RUN)); make export: export it into $(dir $(EXPORTED)), then CAPSNET_MODEL=$(dir $(EXPORTED)) for every stage"
	@echo "make container  the CPU image of CAPSNET_MODEL (Docker, else buildah), then make container-run serves it on $(HOST):$(PORT)"
	@echo "make setup | data | loadtest | replicas | peers | soak | build | container-gpu | bench | experiments | publish | clean"

# Two sets of packages in one venv: serving only (ONNX Runtime, BentoML, numpy, Pillow: what make serve,
# build and container need with the published ONNX files), or everything (PyTorch, Locust, the tests).
# The machine's own pip installs into the venv when it has one (`pip --python`): a venv without pip of
# its own takes 0.2 s instead of 7.
HOST_PIP := $(shell $(PYTHON) -m pip --version >/dev/null 2>&1 && echo yes)
PIP := $(if $(HOST_PIP),$(PYTHON) -m pip --python $(PY),$(PY) -m pip)

$(PY):
	$(PYTHON) -m venv $(if $(HOST_PIP),--without-pip) $(VENV)

$(VENV)/.serve: pyproject.toml | $(PY)
	$(PIP) install -q --no-compile -e '.[serve]'
	touch $@

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@ $(VENV)/.serve

serve-setup: $(VENV)/.serve

setup: $(VENV)/.installed tools

# Debian's tools the tests and targets use, where this machine lets us install them (root and apt-get): Chromium
# (the page, tests/test_ui.py), HAProxy (make replicas), wrk (make loadtest-pinned, make peers), qemu-user (the
# AVX2-only CPU's int8 kernels, export/avx2.py), h2load (make peers' gRPC rows: a compiled HTTP/2 client that sends
# gRPC's frames). One apt-get run; each as package:command.
TOOLS := chromium:chromium haproxy:haproxy wrk:wrk qemu-user:qemu-x86_64 nghttp2-client:h2load
tools:
	@missing="$$(for t in $(TOOLS); do command -v $${t#*:} >/dev/null 2>&1 || echo $${t%%:*}; done)"; \
	[ -z "$$missing" ] || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && apt-get update -qq \
	  && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } \
	  || echo "note: Debian's $$missing could not be installed here; the tests that need them are skipped"

data: setup
	$(PY) -c "from mnist import ensure_mnist; print(ensure_mnist())"

train: setup
	$(PY) -m training $(TRAIN_ARGS) --out $(RUN)

# The run just trained (RUN) -> EXPORTED and its variants, decoder, verification record, card and Triton repository.
export: setup
	@[ -f $(RUN)/checkpoint.safetensors ] || { echo "export: no trained run in $(RUN) (make train first, or RUN=...)" >&2; exit 1; }
	$(PY) -m export --checkpoint $(RUN)/checkpoint.safetensors --out $(EXPORTED) $(EXPORT_ARGS)

# Maintainers: models/ again from the published weights (the same export, verification, variants, card and Triton
# repository), then every marked figure in the documents re-measured on those files (scripts/docs_numbers.py).
publish: setup
	$(PY) scripts/docs_numbers.py

serve: | serve-setup
	CAPSNET_MODEL=$(CAPSNET_MODEL) CAPSNET_GRPC_HOST=$(or $(CAPSNET_GRPC_HOST),$(HOST)) \
	  $(VENV)/bin/bentoml serve serving.service:CapsNet --host $(HOST) --port $(PORT)

# The serving peers (PyTriton, LitServe, Ray Serve) in a venv of their own: PyTriton holds numpy below 2.
# KServe's model server in another (.venv-kserve): it pins its own FastAPI, uvicorn and protobuf.
pip_of = $(if $(HOST_PIP),$(PYTHON) -m pip --python $(1)/bin/python,$(1)/bin/python -m pip)
PEERS_VENV := .venv-peers
PEERS_PIP := $(call pip_of,$(PEERS_VENV))
KSERVE_VENV := .venv-kserve
%/bin/python:
	$(PYTHON) -m venv $(if $(HOST_PIP),--without-pip) $*

$(PEERS_VENV)/.triton: pyproject.toml | $(PEERS_VENV)/bin/python
	$(PEERS_PIP) install -q --no-compile -e '.[triton-peer]'
	touch $@

# PyTriton first, then the other peers' pinned packages on top (the `peers` extra's own lines): asked for all at once,
# with the project itself (-e '.[peers]'), pip's resolver was still searching after 25 minutes
PEERS_PACKAGES = $(shell $(PYTHON) -c "import tomllib; print(' '.join(repr(p) for p in tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['peers'] if not p.startswith('capsnet')))")
$(PEERS_VENV)/.installed: pyproject.toml $(PEERS_VENV)/.triton
	$(PEERS_PIP) install -q $(PEERS_PACKAGES)
	touch $@

$(KSERVE_VENV)/.installed: pyproject.toml | $(KSERVE_VENV)/bin/python
	$(call pip_of,$(KSERVE_VENV)) install -q --no-compile -e '.[kserve-peer]'
	touch $@

peers-setup: $(PEERS_VENV)/.installed $(KSERVE_VENV)/.installed

# The service against the serving peers, side by side on one pinned core (python -m loadtest.peers --help).
PEERS_ARGS ?=
peers: | setup peers-setup
	$(PY) -m loadtest.peers --model $(CAPSNET_MODEL) $(PEERS_ARGS)

# Two replicas behind HAProxy (deploy/haproxy/haproxy.cfg) under Locust, restarted one after the other
# mid-run; REPLICAS_ARGS="--mode kill" kills one instead (python -m loadtest.replicas --help).
REPLICAS_ARGS ?=
replicas: | setup
	$(PY) -m loadtest.replicas --model $(CAPSNET_MODEL) $(REPLICAS_ARGS)

# An hour of mixed traffic at 70% of its measured peak, watched for growth (python -m loadtest.soak --help;
# SOAK_ARGS="--minutes 10" for a shorter one).
SOAK_ARGS ?=
soak: | setup
	$(PY) -m loadtest.soak --model $(CAPSNET_MODEL) $(SOAK_ARGS)

loadtest: | setup
	$(PY) -m loadtest --model $(CAPSNET_MODEL) $(LOADTEST_ARGS)

# The per-request cost on disjoint cores: the service and the hand-written baseline, wrk as the client.
loadtest-pinned: | setup
	$(PY) -m loadtest.pinned --model $(CAPSNET_MODEL) $(PINNED_ARGS)

# The Bento of CAPSNET_MODEL: serving/ and the model's files (deploy/container/bento.sh)
build: | serve-setup
	CAPSNET_MODEL=$(CAPSNET_MODEL) deploy/container/bento.sh cpu

# onnxruntime-web's WASM build for the page's in-browser mode, from its npm package (clients/js, pinned).
ORT_WEB_FILES := ort.wasm.min.mjs ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm
web:
	cd clients/js && npm ci --no-audit --no-fund
	mkdir -p serving/static/ort
	cp $(addprefix clients/js/node_modules/onnxruntime-web/dist/,$(ORT_WEB_FILES)) serving/static/ort/

# The images: Docker where an engine answers, else buildah; the base image from Debian's packages.
container: | serve-setup
	CAPSNET_MODEL=$(CAPSNET_MODEL) deploy/container/build.sh cpu

container-gpu: | serve-setup
	CAPSNET_MODEL=$(CAPSNET_MODEL) deploy/container/build.sh gpu

# Inside the GPU image: CUDA libraries load, CAPSNET_DEVICE=cpu serves, cuda without a GPU stops at start-up.
container-gpu-check:
	deploy/container/check-gpu-image.sh

# The CPU image on HOST:PORT, with every CAPSNET_* setting of the environment but CAPSNET_MODEL (deploy/container/run.sh).
container-run:
	HOST=$(HOST) PORT=$(PORT) GRPC_PORT=$(GRPC_PORT) deploy/container/run.sh cpu

bench: | setup
	$(PY) -m export.bench --onnx $(CAPSNET_MODEL) $(BENCH_ARGS)

# The GPU session: stage its wheels here (parts of at most 40 MiB in .gpu-bundle/), run scripts/gpu-run.sh there.
gpu-stage:
	scripts/gpu-stage.sh

# Re-measure the documents' marked numbers on the published files as they are (int8 recipes, other runtimes, the
# README's curl answers, load test, pinned, replicas, slow clients) and rewrite them in place from docs/numbers/.
docs-numbers: | setup
	$(PY) scripts/docs_numbers.py --skip export

experiments: setup
	$(PY) -m training.evaluate --out docs/experiments

# Each parser of the service fuzzed for FUZZ_SECONDS by atheris (python -m fuzz --help); a finding stops the run
# and is kept in fuzz/findings/TARGET/, which every later run and tests/test_fuzz.py replay. Then every route of a
# real service fuzzed from outside for FUZZ_OUTSIDE_SECONDS (python -m fuzz.outside --help).
FUZZ_SECONDS ?= 1800
FUZZ_TARGETS ?= octets json v2-json v2-binary grpc multipart image
FUZZ_OUTSIDE_SECONDS ?= 180
fuzz: setup
	@for t in $(FUZZ_TARGETS); do $(PY) -m fuzz $$t --seconds $(FUZZ_SECONDS) || exit 1; done
	$(PY) -m fuzz.outside --seconds $(FUZZ_OUTSIDE_SECONDS)

# The whole suite, with its 15 slowest tests listed at the end.
# the tests run the peers' quick mode with PyTriton (tests/test_peers.py)
test: setup $(PEERS_VENV)/.triton $(KSERVE_VENV)/.installed
	$(PY) -m pytest -rs --durations=15 $(PYTEST_ARGS)

# The inner loop: everything that runs in-process (the HTTP contract, hostile inputs, the runtime, the batcher,
# settings, preprocessing, layout); no real process, training, export or full test set.
test-quick: setup
	$(PY) -m pytest -rs -m "not slow" --durations=5 $(PYTEST_ARGS)

clean:
	rm -rf runs artifacts
