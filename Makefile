# The two commands of the README: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install stack lint bench-geofence bench-ingest clean-state

$(BIN)/fleet: pyproject.toml
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: install python3-venv (apt-get install python3-venv)"; exit 1; }
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(BIN)/fleet

install: $(BIN)/fleet

stack: install
	$(BIN)/fleet stack install

demo: stack
	$(BIN)/fleet demo

test: install
	$(BIN)/fleet stack install --tests
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

bench-geofence: install
	$(BIN)/python bench/geofence.py

bench-ingest: stack
	$(BIN)/python bench/ingest.py

clean-state:
	-$(BIN)/fleet stack down
	rm -rf .fleet
