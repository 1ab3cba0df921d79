# The two quickstart commands (`make run`, `make test`) create and fill .venv themselves, with
# exactly the versions in uv.lock: every target syncs .venv to the lock first (well under a second
# when nothing changed; a changed lock re-installs what changed, a stray package is removed).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The lock tool, bootstrapped with pip into .venv; uv.lock pins uv itself (dev extra), so after
# the first sync .venv holds the locked uv (tests/unit/test_lock.py checks the two agree).
UV_VERSION := 0.13.9
UV := $(BIN)/uv
SYNC := sync --locked --extra dev --extra bench --python $(BIN)/python

.PHONY: venv run test test-fast lint format lock requirements bench bench-train bench-export bench-serve clean hand-models vendor-web
.PHONY: bench-peers

$(UV):
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'

## venv: .venv exactly as uv.lock says (--locked: fails if pyproject.toml changed without `make lock`)
venv: | $(UV)
	$(UV) $(SYNC) --quiet

## lock: re-resolve every dependency (and the side environments of checkov, mediapipe and
## pytriton) to the newest versions pyproject.toml allows, on purpose; re-export requirements/
## and re-sync .venv (README).
## `make lock UPGRADE=` keeps every pin that still fits (after adding a dependency, say).
UPGRADE ?= --upgrade
lock: | $(UV)
	$(UV) lock $(UPGRADE)
	for tool in checkov mediapipe pytriton; do \
	  $(UV) pip compile --quiet $(UPGRADE) --universal --python-version 3.11 --no-header \
	    requirements/$$tool.in -o requirements/$$tool.txt || exit 1; \
	done
	$(MAKE) --no-print-directory requirements
	$(UV) $(SYNC)

## requirements: re-export requirements/*.txt from uv.lock as it is (no re-resolution)
requirements: | $(UV)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/export-requirements.sh requirements

## run: train the default model on embedded data, export it, serve it (Ctrl-C stops)
run: venv
	-bash scripts/vendor-web.sh
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/quickstart.sh

## hand-models: MediaPipe's hand models into .cache/hand_models (for --crop-hands and versions
## whose contract crops the hand), taken out of the hash-pinned wheel of requirements/hand-models.txt
hand-models: venv
	bash scripts/fetch-hand-models.sh

## vendor-web: LiteRT.js (web/package-lock.json, npm ci) into service/static/vendor/ for the
## demo page's device mode; only the files the page loads
vendor-web:
	bash scripts/vendor-web.sh

## test: the whole suite (installs Chromium and Prometheus from Debian when it can)
test: venv
	bash scripts/install-test-tools.sh
	$(BIN)/python -m pytest

## test-fast: every test that needs no training run, server, browser, container or package
## index (tests/conftest.py marks tests by the fixtures they request); under two minutes here
FAST := not slow and not server and not browser and not prometheus and not podman and not network
test-fast: venv
	$(BIN)/python -m pytest -q -m "$(FAST)" --durations=10

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy handserve handserve_cli training service

format: venv
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-train bench-export bench-serve

bench-train: venv
	$(BIN)/python benchmarks/train_bench.py all

bench-export: venv
	$(BIN)/python benchmarks/export_parity.py

# bench-serve measures the newest export in models/ (make run makes one)
bench-serve: venv
	$(BIN)/python benchmarks/serve_bench.py

# bench-peers: handserve against KServe's ModelServer, Triton (PyTriton, in .cache/venv-pytriton,
# made from requirements/pytriton.txt on first use) and the naive server, on one export
# (docs/benchmarks/peers.md): make bench-peers MODEL=NAME [MODELS_DIR=models] [PEERS_ARGS=...]
MODELS_DIR ?= models
PEERS_ARGS ?=
bench-peers: venv
	@test -n "$(MODEL)" || { echo "bench-peers: set MODEL=<a model name in $(MODELS_DIR)>" >&2; exit 2; }
	$(BIN)/python benchmarks/peers.py --models-dir $(MODELS_DIR) --model $(MODEL) $(PEERS_ARGS)

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache

## bento / bento-gpu: check models/ holds a servable model, then build the LiteRT (CPU) or the
## SavedModel (GPU, TensorFlow) Bento. HANDSERVE_ALLOW_EMPTY_BENTO=1: an image for a models volume.
.PHONY: bento bento-gpu
bento: venv
	$(BIN)/python -m service.bento_guard -f bentofile.yaml
	$(BIN)/bentoml build -f bentofile.yaml

bento-gpu: venv
	$(BIN)/python -m service.bento_guard -f bentofile-gpu.yaml
	$(BIN)/bentoml build -f bentofile-gpu.yaml

# ---- Kubernetes (k8s/README.md). The image tags live in k8s/release/kustomization.yaml only.
REGISTRY ?= registry.example.com
IMAGE ?= handserve
BENTOFILE ?= bentofile.yaml
K8S_RELEASE ?= k8s/release/kustomization.yaml

.PHONY: k8s-pin release release-podman image image-gpu image-tools

# ---- Container images with podman (k8s/image.py; k8s/README.md, "Images with podman").
## BASE=default: BentoML's default base (python:3.11-slim from Docker Hub) and Dockerfile.
## BASE=debian: a base made from Debian's packages by mmdebstrap (cached in .cache/podman), for
## machines that reach Debian's archive and the package index but no container registry; its
## Dockerfile installs no system packages (BentoML's default adds build-essential, git, gnupg2).
BASE ?= default
## podman reads k8s/podman/containers.conf (runc, cgroupfs, ulimits: what Debian bookworm's
## podman 4.3 needs as root) unless CONTAINERS_CONF names your own.
TOOLS_TAG ?= dev

## image: check models/, build the CPU Bento and its image REGISTRY/IMAGE:<Bento version> with
## bentoml containerize on podman (HANDSERVE_ALLOW_EMPTY_BENTO=1: an image for a models volume)
image: venv
	$(BIN)/python -m service.bento_guard -f $(BENTOFILE)
	$(BIN)/python k8s/image.py bento --bentofile $(BENTOFILE) --base $(BASE) \
	  --repository $(REGISTRY)/$(IMAGE)

## release-podman: make release with podman: make image, podman push, pin the Bento's tag
## (PUSH_FLAGS=--tls-verify=false for a registry without TLS)
PUSH_FLAGS ?=
release-podman: venv
	$(BIN)/python -m service.bento_guard -f $(BENTOFILE)
	ref=$$($(BIN)/python k8s/image.py bento --bentofile $(BENTOFILE) --base $(BASE) \
	  --repository $(REGISTRY)/$(IMAGE)) && test -n "$$ref" \
	  && podman push $(PUSH_FLAGS) "$$ref" \
	  && $(BIN)/python k8s/pin_image.py --file $(K8S_RELEASE) $(IMAGE) "$$ref"

## image-gpu: the same for bentofile-gpu.yaml (TensorFlow with its CUDA wheels, several GB):
## opt-in, not part of the tests
image-gpu:
	$(MAKE) --no-print-directory image BENTOFILE=bentofile-gpu.yaml IMAGE=handserve-gpu

## image-tools: the tools image (k8s/training/Dockerfile: the training and load-test Jobs)
image-tools: venv
	$(BIN)/python k8s/image.py tools --base $(BASE) \
	  --tag $(REGISTRY)/handserve-tools:$(TOOLS_TAG)

## k8s-pin: pin IMAGE (handserve, handserve-gpu, handserve-tools) to REGISTRY/IMAGE:TAG in k8s/release
k8s-pin:
	@test -n "$(TAG)" || { echo "k8s-pin: set TAG=<immutable tag or Bento version>" >&2; exit 2; }
	$(BIN)/python k8s/pin_image.py --file $(K8S_RELEASE) $(IMAGE) $(REGISTRY)/$(IMAGE):$(TAG)

## release: model check, bentoml build -f BENTOFILE, containerize, push to REGISTRY, pin IMAGE
## (needs Docker). GPU: make release BENTOFILE=bentofile-gpu.yaml IMAGE=handserve-gpu
release:
	$(BIN)/python -m service.bento_guard -f $(BENTOFILE)
	tag=$$($(BIN)/bentoml build -f $(BENTOFILE) -o tag | sed -n 's/^__tag__://p' | tail -n 1); \
	test -n "$$tag" || { echo "release: bentoml build printed no tag" >&2; exit 2; }; \
	version=$${tag#*:}; \
	$(BIN)/bentoml containerize "$$tag" -t $(REGISTRY)/$(IMAGE):$$version \
	  && docker push $(REGISTRY)/$(IMAGE):$$version \
	  && $(BIN)/python k8s/pin_image.py --file $(K8S_RELEASE) $(IMAGE) $(REGISTRY)/$(IMAGE):$$version
