# dllm: the two commands of the README do all set-up on a fresh machine.
#   make run    sets up libtorch, builds, starts dllm on the embedded default model
#   make test   sets up libtorch and the test Python environment, builds, runs every test
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test libtorch venv build release bench gpu-check clean

libtorch:
	@./scripts/setup-libtorch.sh

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

build: libtorch
	$(CARGO) build --workspace --all-targets

release: libtorch
	$(CARGO) build --release

run: libtorch
	$(CARGO) run --release --quiet --

test: libtorch venv
	DLLM_PYTHON=$(abspath $(PY)) $(CARGO) test --workspace --all-targets

bench: release
	./scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
