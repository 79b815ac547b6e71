# `make demo` and `make test` create .venv/ and install what they need on first use.
PYTHON ?= python3
# Let Python cache compiled modules in .venv: torch and transformers import in seconds, not tens.
unexport PYTHONDONTWRITEBYTECODE
VENV := .venv
BIN := $(VENV)/bin
# A local wheel folder (our machines keep the CPU build of torch there) is used when present.
FIND_LINKS := $(or $(PIP_FIND_LINKS),/opt/wheels)
FIND := $(if $(wildcard $(FIND_LINKS)),--find-links $(FIND_LINKS),)
# torch is pinned in the same command as everything that depends on it (a CPU build).
TORCH ?= torch==2.13.0
UV := $(BIN)/uv pip install --python $(BIN)/python $(FIND)

.PHONY: demo test lint format bench serve gpu-smoke install install-dev clean

$(BIN)/uv:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv

$(VENV)/.core: pyproject.toml | $(BIN)/uv
	$(UV) -e .
	@touch $@

# SAM 2 is an sdist: built against the installed torch, without its CUDA extension, and
# without its torchvision requirement (PyPI's torchvision breaks beside the CPU torch build
# here, and transformers then fails to import its image processors).
$(VENV)/.dev: pyproject.toml | $(BIN)/uv
	$(UV) "$(TORCH)" setuptools wheel "hydra-core>=1.3.2" "iopath>=0.1.10" -e ".[dev,hf,server,rl]"
	SAM2_BUILD_CUDA=0 $(UV) --no-build-isolation --no-deps "sam2==1.1.0"
	@touch $@ $(VENV)/.core

install: $(VENV)/.core
install-dev: $(VENV)/.dev

demo: $(VENV)/.core
	$(BIN)/segresearch demo

test: lint
	$(BIN)/python -m pytest

# ruff, the layer contracts in pyproject.toml (lint-imports) and mypy on the public API modules.
lint: $(VENV)/.dev
	$(BIN)/ruff check segresearch tests bench
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff check --fix segresearch tests bench

bench: $(VENV)/.dev
	$(BIN)/python bench/graph_overhead.py

# The LangGraph API server on 127.0.0.1:2024; e.g. make serve SERVE_ARGS="--port 2100 --jobs 64"
serve: $(VENV)/.dev
	$(BIN)/segresearch serve graph $(SERVE_ARGS)

# On a CUDA machine with vllm and verl installed (offline): vLLM + `run` + two GRPO steps.
gpu-smoke:
	bash bench/gpu_smoke.sh

# Torch-only GPU check (SAM 2, frame prefetch, transformers backend; no vLLM, verl or Ray), on
# .venv's Python or GPU_PYTHON=...; e.g. make gpu-check GPU_CHECK_ARGS="--device cpu --quick"
gpu-check:
	$(or $(GPU_PYTHON),$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))) bench/gpu_check.py $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .langgraph_api runs
