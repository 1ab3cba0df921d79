# The two quickstart commands (`make run`, `make test`) create and fill .venv themselves.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint format bench bench-train bench-export bench-serve clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## run: train the default model on embedded data, export it, serve it (Ctrl-C stops)
run: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" bash scripts/quickstart.sh

## test: the whole suite (installs Chromium and Prometheus from Debian when it can)
test: $(STAMP)
	bash scripts/install-test-tools.sh
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy handserve handserve_cli training service

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: bench-train bench-export bench-serve

bench-train: $(STAMP)
	$(BIN)/python benchmarks/train_bench.py all

bench-export: $(STAMP)
	$(BIN)/python benchmarks/export_parity.py

# bench-serve measures the newest export in models/ (make run makes one)
bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve_bench.py

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache

## bento / bento-gpu: check models/ holds a servable model, then build the LiteRT (CPU) or the
## SavedModel (GPU, TensorFlow) Bento. HANDSERVE_ALLOW_EMPTY_BENTO=1: an image for a models volume.
.PHONY: bento bento-gpu
bento: $(STAMP)
	$(BIN)/python -m service.bento_guard -f bentofile.yaml
	$(BIN)/bentoml build -f bentofile.yaml

bento-gpu: $(STAMP)
	$(BIN)/python -m service.bento_guard -f bentofile-gpu.yaml
	$(BIN)/bentoml build -f bentofile-gpu.yaml

# ---- Kubernetes (k8s/README.md). The image tags live in k8s/release/kustomization.yaml only.
REGISTRY ?= registry.example.com
IMAGE ?= handserve
BENTOFILE ?= bentofile.yaml
K8S_RELEASE ?= k8s/release/kustomization.yaml

.PHONY: k8s-pin release

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
