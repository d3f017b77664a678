# Fresh machine to working voicebot: `make demo` or `make test`. Every step is idempotent and skips work
# already done (stamps in .venv/, verified model checksums), so a second run is quick.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
# CPU build of torch: an unpinned torch pulls a multi-GB CUDA build (see README).
TORCH_SPEC ?= torch==2.13.0
LLAMA_SPEC ?= llama-cpp-python==0.3.36
# AMX-free flags: the -march=native build segfaults in ggml_backend_amx_mul_mat on CPUs that advertise AMX.
# AVX-512 only where this CPU has it: a build with it dies with "illegal instruction" on one without.
AVX512 := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo ON || echo OFF)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=$(AVX512)
PROFILE ?= embedded

.PHONY: install models postgres demo cluster-demo test test-full eval bench soak lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install "$(TORCH_SPEC)"
	touch $@

# The stamp names the flags, so a machine with other CPU features rebuilds. --no-cache-dir: pip's wheel cache
# does not know the flags a wheel was built with, and would hand back one built for another CPU.
LLAMA_STAMP := $(VENV)/.llama-avx512-$(AVX512)
$(LLAMA_STAMP): | $(VENV)/.torch
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PIP) install --no-cache-dir --force-reinstall --no-deps "$(LLAMA_SPEC)"
	$(PIP) install "$(LLAMA_SPEC)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch $(LLAMA_STAMP)
	$(PIP) install -e '.[dev]'
	touch $@

install: $(VENV)/.installed

models: install
	$(BIN)/voicebot models fetch --profile $(PROFILE)

demo: models
	$(BIN)/python -m telephony.demo

# Debian's PostgreSQL server programs (the store tests run on a server of their own; cluster-demo's database).
postgres:
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; }

# Two workers, one PostgreSQL database, one shared LLM server, all on loopback; simulated calls on both workers.
cluster-demo: models postgres
	$(BIN)/python -m telephony.cluster_demo

test: models
	$(BIN)/pytest -q

# The suite with the cases it leaves out to stay short: all six businesses' KB evaluations (it runs two) and
# every sample call through the real server in real time (it runs nine; all run lock-step in test_voice_calls).
test-full: models
	$(BIN)/pytest -q --full

# Routing, replies and tickets on all six businesses' knowledge bases; prints each KB's confusion table and misses.
eval: models
	$(BIN)/pytest -q -s --full tests/test_evaluation.py

bench: models
	$(BIN)/voicebot bench

# N calls at a time (server.max_calls) for 10 minutes, hostile sockets mixed in; checks records and resources.
soak: models
	$(BIN)/python -m telephony.soak --minutes 10

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
