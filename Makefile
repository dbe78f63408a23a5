# The README's commands. Every target that runs code sets up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test bench native deb clean

setup:
	./packaging/setup.sh

native: setup

# make run BLOCK=/24 L2=vmac FAULT=hang HEARTBEAT=switched: any of them, in any mix (python -m agent.lab demo --help).
run: setup
	$(PY) -m agent.lab demo $(if $(BLOCK),--block $(BLOCK)) $(if $(L2),--l2 $(L2)) $(if $(FAULT),--fault $(FAULT)) \
		$(if $(HEARTBEAT),--heartbeat $(HEARTBEAT))

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run_all.py

# dist/dpagent_<version>-1_<arch>.deb (packaging/build-deb.sh)
deb: setup
	./packaging/build-deb.sh

clean:
	rm -rf $(VENV) agent/_native native/build dist
