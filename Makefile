# Two entry points, both self-installing on a fresh machine with Python 3.11 and git:
#   make pipeline   set up the runtime, then run the whole pipeline (`dvc repro`)
#   make test       set up the runtime and the test tools, then run every test (fast and slow)
# Both install the fully pinned lock files; `make lock` refreshes them from requirements*.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup setup-dev setup-jax pipeline test test-fast lint lock check-lock ui screenshots

setup: $(VENV)/.runtime .dvc/plots/offline.html
setup-dev: setup $(VENV)/.dev

$(VENV)/.runtime: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	touch $@

# `dvc plots show` without internet: vega inside the page template that .dvc/config names.
.dvc/plots/offline.html: scripts/offline_plots.py | $(VENV)/.runtime
	$(BIN)/python scripts/offline_plots.py

# The JAX backend (CPU build) for KERAS_BACKEND=jax, at the versions the dev lock pins.
setup-jax: $(VENV)/.jax
$(VENV)/.jax: $(VENV)/.runtime requirements-jax.txt requirements-dev.lock
	$(BIN)/python -m pip install --quiet -r requirements-jax.txt -c requirements-dev.lock
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/python -m pip install --quiet -r requirements-dev.lock
	touch $@

pipeline: setup
	dvc repro

# One worker per core, at most four; each test file runs whole in one worker, so a module's
# services (PostgreSQL, a server) start once, and each worker builds the session's worlds.
PARALLEL := -n auto --maxprocesses 4 --dist loadfile

test: setup-dev
	python -m pytest $(PARALLEL) --durations=15

test-fast: setup-dev
	python -m pytest $(PARALLEL) -m "not slow" --durations=15

# The MLflow UI on the workspace's runs, at the page that lists them (make ui UI_PORT=5001).
UI_PORT ?= 5000
ui: setup
	python -m mlpipe.ui --port $(UI_PORT)

# The README's MLflow UI screenshots, refreshed from this workspace's store in headless
# Chromium (Debian's chromium and chromium-driver), each page checked first.
screenshots: setup-dev
	python scripts/ui_screenshots.py

# Is the committed dvc.lock true to this checkout's code, params and commands? (CI runs it first.)
check-lock: setup
	python scripts/check_lock.py

# Style, formatting, and the layers' import contracts (pyproject.toml's [tool.importlinter]).
lint: setup-dev
	ruff check . && ruff format --check . && lint-imports

# The whole transitive set, pinned for every platform, from the readable top-level lists.
lock: setup
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 requirements.txt -o requirements.lock
	$(BIN)/uv pip compile --quiet --universal --python-version 3.11 requirements-dev.txt -o requirements-dev.lock
