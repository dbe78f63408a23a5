# The README's commands. Every target that runs code sets up first.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup run test bench native clean

setup:
	./packaging/setup.sh

native: setup

run: setup
	$(PY) -m agent.lab demo

test: setup
	$(PY) -m pytest -q tests

bench: setup
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) agent/_native native/build
