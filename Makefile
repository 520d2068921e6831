# Two commands do everything:  make demo  (install + run the demo stack)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps venv demo test lint bench faults clean

install: system-deps venv

system-deps:
	bash scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/fleetgate demo

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy device_protocol gateway firmware_sim
	$(BIN)/pytest

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy device_protocol gateway firmware_sim

faults: install
	FAULTS_LONG=1 FAULTS_REPORT=docs/reliability.md $(BIN)/pytest tests/faults

# Every benchmark with 3 interleaved repeats (~15 min on 2 cores); each rewrites its own section
# of bench/RESULTS.md. Profiles are added when py-spy is installed (.venv/bin/pip install py-spy).
PROFILE = $(if $(wildcard $(BIN)/py-spy),--profile,)
bench: install
	$(BIN)/python bench/throughput.py --repeat 3 $(PROFILE)
	$(BIN)/python bench/latency.py --repeat 3
	$(BIN)/python bench/drain.py --repeat 3 $(PROFILE)
	$(BIN)/python bench/drain.py --repeat 3 --gateway-setting remote_write_live_first=true --section drain-live-first --title " with remote_write_live_first"
	$(BIN)/python bench/vmagent_peer.py --repeat 3

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache .hypothesis
