# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   fine-tune -> generate, offline, on CPU (the embedded default)
#   make test   the test suite (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: demo test test-slow lint bench

$(BIN)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the pinned CPU build first, so nothing below pulls a multi-GB CUDA build over it
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

$(BIN)/.bench-ready: $(BIN)/.ready
	$(BIN)/pip install --quiet -e ".[dev,bench]"
	touch $@

demo: $(BIN)/.ready
	$(BIN)/codeinstruct demo

test: $(BIN)/.ready
	$(BIN)/python -m pytest -q

test-slow: $(BIN)/.ready
	$(BIN)/python -m pytest -q -m slow

lint: $(BIN)/.ready
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

bench: $(BIN)/.bench-ready
	$(BIN)/python benchmarks/sft_throughput.py
