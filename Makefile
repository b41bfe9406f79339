# flashclr: the two commands of the README are `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

# A machine without a GPU takes the CPU build of torch; with a GPU, pip's default (CUDA) build.
TORCH_SPEC := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch" || echo "torch==2.13.0")
# DeepSpeed ships as an sdist whose setup.py imports torch: built in an isolated environment it
# would download a CUDA torch of several GB, so it is built against the torch installed here.
DEEPSPEED_SPEC := deepspeed==0.19.8

.PHONY: demo test lint bench venv clean

venv: $(STAMP)

$(STAMP): setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q --no-build-isolation $(DEEPSPEED_SPEC)
	$(PIP) install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flashclr.core.envcheck

test: $(STAMP)
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) benchmarks/run.py --quick

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
