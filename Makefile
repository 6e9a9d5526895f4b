# `make demo` and `make test` bootstrap .venv themselves: on a fresh machine they are all the set-up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo cluster-demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python demo_load.py --data-dir data

cluster-demo: $(STAMP)
	$(BIN)/python demo_load.py --cluster 2 --data-dir data

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in benchmarks/*.py; do [ $$b = benchmarks/common.py ] || $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) data .pytest_cache .hypothesis
