# Two entry points, both self-installing on a fresh machine with Python 3.11 and git:
#   make pipeline   set up, then run the whole pipeline (`dvc repro`)
#   make test       set up, then run every test (fast and slow)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup pipeline test test-fast lint

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

pipeline: setup
	dvc repro

test: setup
	python -m pytest

test-fast: setup
	python -m pytest -m "not slow"

lint: setup
	ruff check . && ruff format --check .
