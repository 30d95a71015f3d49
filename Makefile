# dllm: the two commands of the README do all set-up on a fresh machine.
#   make run    sets up libtorch, builds, starts dllm on the embedded default model
#   make test   sets up libtorch, the test Python environment, Chromium and evcxr, builds, runs every test
#   make model  retrains the embedded models from scratch
SHELL := /bin/bash
CARGO ?= cargo
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: run test libtorch venv browser evcxr rust-kernel build release bench gpu-check model clean

libtorch:
	@./scripts/setup-libtorch.sh

$(VENV)/.installed: tests/requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

venv: $(VENV)/.installed

# Debian's chromium and chromium-driver for the JupyterLab check (kernels/tests/browser.rs).
browser:
	@./scripts/setup-browser.sh

# evcxr's Jupyter kernel, once per user (cargo install, about 15 minutes on two cores), for the Rust API
# notebook's test (kernels/tests/notebooks.rs). `make rust-kernel` also installs the "Rust (dllm)" kernelspec
# for JupyterLab (docs/rust-api.md).
evcxr: libtorch
	@./scripts/setup-evcxr.sh

rust-kernel: libtorch
	@./scripts/setup-evcxr.sh --user

build: libtorch
	$(CARGO) build --workspace --all-targets

release: libtorch
	$(CARGO) build --release

run: libtorch
	$(CARGO) run --release --quiet --

test: libtorch venv browser evcxr
	DLLM_PYTHON=$(abspath $(PY)) $(CARGO) test --workspace --all-targets
	# Doc tests run from a temporary folder, where the rpath of .cargo/config.toml does not reach libtorch.
	LD_LIBRARY_PATH=$(abspath .libtorch/lib) $(CARGO) test --workspace --doc

# Retrains both embedded models from scratch into target/model/tiny and target/model/tiny-2.2 (an interrupted run
# resumes there) and installs them into engine/assets/, which the binary embeds: builtin:tiny (LLaDA2.1, about
# 45 minutes on one CPU thread) and builtin:tiny-2.2 (LLaDA2.2, 57 minutes on two threads; docs/training.md). The
# shipped weights were trained with these thread counts (other counts round differently).
model: release
	./target/release/dllm train --recipe tiny --out target/model/tiny --threads 1
	./target/release/dllm train --recipe tiny-2.2 --out target/model/tiny-2.2 --threads 2
	cp target/model/tiny/config.json target/model/tiny/model.safetensors target/model/tiny/tokenizer.json engine/assets/tiny/
	cp target/model/tiny-2.2/config.json target/model/tiny-2.2/model.safetensors target/model/tiny-2.2/tokenizer.json engine/assets/tiny-2.2/
	$(CARGO) build --release

bench: release
	./scripts/bench.sh

clean:
	$(CARGO) clean
	rm -rf $(VENV)
