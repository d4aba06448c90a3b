# Two entry points for a fresh machine with only python3: `make quickstart` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
RUN ?= runs/quickstart
PYTEST_ARGS ?=

.PHONY: quickstart test test-slow test-all benchmark clean

$(INSTALLED): setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

quickstart: $(INSTALLED)
	$(BIN)/keras-vit quickstart --out $(RUN)

test: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/pytest -m "not slow" -n 2 $(PYTEST_ARGS)

test-slow: $(INSTALLED)
	$(BIN)/pytest -m slow $(PYTEST_ARGS)

test-all: $(INSTALLED)
	$(BIN)/pytest $(PYTEST_ARGS)

benchmark: $(INSTALLED)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) runs exports build *.egg-info
