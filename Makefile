# Entry points: `make demo`, `make test` and `make probe` (the bad-input probe alone, RELIABILITY.md). Each creates .venv on a
# fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test probe install dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e '.[all]'
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PIP) -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(BIN)/cnnlab train --data builtin:digits --model seed_cnn --epochs 10 --batch-size 64 --out runs/demo --overwrite

test: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q

probe: $(VENV)/.installed-dev
	$(BIN)/python -m pytest -q tests/test_probe.py

clean:
	rm -rf $(VENV) runs build src/*.egg-info
