# The README's two commands, `make serve` and `make test`, plus a few helpers.
# Each creates (or reuses) the virtualenv at .venv and installs what it needs.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: serve test lint train-lenet5 train-mlp train bench clean help

help:
	@echo "make serve   start the service on the shipped models (http://$(HOST):$(PORT))"
	@echo "make test    run the whole test suite"
	@echo "make train   retrain both shipped models on full MNIST (downloads it if needed)"
	@echo "make lint    ruff and mypy"
	@echo "make bench   every benchmark under bench/, quick sizes (BENCH_ARGS= for full size)"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# Stamp files: reinstall only when pyproject.toml changes.
$(VENV)/.serve: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[serve]'
	@touch $@

$(VENV)/.all: pyproject.toml | $(BIN)/python
	$(PIP) install --quiet -e '.[train,serve,dev]'
	@touch $@ $(VENV)/.serve

serve: $(VENV)/.serve
	$(BIN)/digits serve --host $(HOST) --port $(PORT)

test: $(VENV)/.all
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.all
	$(BIN)/ruff check .
	$(BIN)/mypy

# The commands that produced the shipped models (see README "Reproducing the models").
train-lenet5: $(VENV)/.all
	$(BIN)/digits train --model lenet5 --augment --augment-strokes --epochs 30 --patience 100 --seed 1 \
	  --lr 0.002 --dropout 0.1 --threads 1 --out runs/lenet5 --name lenet5 $(TRAIN_ARGS)
	$(BIN)/digits export runs/lenet5 --out models/lenet5.onnx --manifest models/manifest.json --default \
	  --readme README.md

train-mlp: $(VENV)/.all
	$(BIN)/digits train --model mlp --augment --epochs 30 --lr 0.002 --dropout 0.2 --threads 1 \
	  --out runs/mlp --name mlp $(TRAIN_ARGS)
	$(BIN)/digits export runs/mlp --out models/mlp.onnx --manifest models/manifest.json --readme README.md

train: train-lenet5 train-mlp

# Every benchmark at small sizes (a few minutes): `make bench`; at full size: `make bench BENCH_ARGS=`.
BENCH_ARGS ?= --quick
bench: $(VENV)/.all
	$(BIN)/python -m bench.run_all $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs .pytest_cache
