# Two commands do everything:  make demo  (install + run the demo stack)  and  make test.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps venv demo demo-secure test lint bench bench-api bench-sim bench-scale faults clean

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
	$(BIN)/python -m devstack demo

# The same demo with the production MQTT hop: TLS only, a client certificate per device and for
# the gateway (under var/demo/certs), the shipped deploy/mosquitto/secure config and ACL.
demo-secure: install
	$(BIN)/python -m devstack demo --secure

E2E_ON_BOTH_CORES = tests/e2e/test_seed_alerts.py tests/e2e/test_api_schema.py \
    tests/e2e/test_wheel.py tests/e2e/test_c_sdk.py tests/e2e/test_compose.py \
    tests/e2e/test_devstack.py

test: install
	$(BIN)/ruff check .
	$(BIN)/mypy device_protocol gateway firmware_sim devstack sdk/python/fleetgate_device
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_sizes.py
	# The tests without services (pure logic, one stage, the spec suite, the model), and the
	# end-to-end files that only wait for conditions (no timing in what they assert), on both
	# cores; then the other end-to-end and fault tests one at a time, timed as they were alone.
	$(BIN)/pytest -n 2 --dist loadfile tests/logic tests/stages tests/spec tests/model $(E2E_ON_BOTH_CORES)
	$(BIN)/pytest tests/e2e tests/faults $(addprefix --ignore=,$(E2E_ON_BOTH_CORES))

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy device_protocol gateway firmware_sim devstack sdk/python/fleetgate_device
	$(BIN)/lint-imports
	$(BIN)/python scripts/check_sizes.py

faults: install
	FAULTS_LONG=1 FAULTS_REPORT=docs/reliability.md $(BIN)/pytest tests/faults tests/model

# Every benchmark with 3 interleaved repeats (~21 min on 2 cores); each rewrites its own section
# of bench/RESULTS.md. Profiles are added when py-spy is installed (.venv/bin/pip install py-spy).
PROFILE = $(if $(wildcard $(BIN)/py-spy),--profile,)
bench: install
	$(BIN)/python bench/throughput.py --repeat 3 $(PROFILE)
	$(BIN)/python bench/throughput.py --mqtt-tls plain,tls,tls-stock,plain-stock --repeat 3
	$(BIN)/python bench/latency.py --repeat 3
	$(BIN)/python bench/drain.py --repeat 3 $(PROFILE)
	$(BIN)/python bench/drain.py --repeat 3 --gateway-setting remote_write_live_first=true --section drain-live-first --title " with remote_write_live_first"
	$(BIN)/python bench/vmagent_peer.py --repeat 3
	$(BIN)/python bench/device_sdk.py --repeat 5
	$(BIN)/python bench/c_encoder.py

# The operator API's latency with 100,000 devices (~12 min on 2 cores): p50/p99 per query into
# the "api" section of bench/RESULTS.md. Smaller: make bench-api API_BENCH_ARGS="--devices 10000"
bench-api: install
	$(BIN)/python bench/api.py $(API_BENCH_ARGS)

# The simulator at fleet scale (~2 min): 10,000 devices from one process into Mosquitto, CPU per
# frame against one plain paho client in the same run; the "sim" section of bench/RESULTS.md.
bench-sim: install
	$(BIN)/python bench/sim_scale.py $(SIM_BENCH_ARGS)

# Issue 15 at full scale (~45 min on 2 cores; --quick ~20 min): CPU per frame at 1k/10k/100k
# devices, 100k devices sustained for 10 min, 100k going dark, drain against vmagent, RSS; the
# "scale" section of bench/RESULTS.md. Smaller: make bench-scale SCALE_BENCH_ARGS=--quick
bench-scale: install
	$(BIN)/python bench/scale.py $(SCALE_BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache .mypy_cache .hypothesis
