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
	$(BIN)/mypy handserve training service

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
