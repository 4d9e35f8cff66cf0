# `make demo` and `make test` work on a fresh clone: they create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
# CPU machines: pin the CPU build of torch (set TORCH_INDEX_URL to PyTorch's CPU wheel index
# where plain PyPI would pull the CUDA build). GPU machines take the default build.
TORCH_VERSION ?= 2.13.0
TORCH_INDEX_URL ?=

.PHONY: setup demo demo-fast test lint clean gpu-wheels gpu-check gpu-check-dry

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "GPU found: installing torch with CUDA"; \
		$(PY) -m pip install -q "torch>=2.4"; \
	else \
		echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL),); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m anydistill demo

demo-fast: $(STAMP)
	$(PY) -m anydistill demo --fast

lint: $(STAMP)
	$(PY) -m ruff check .

# One pytest worker per core (pytest-xdist). worksteal: each worker starts on its half of the
# collection (the slowest files first, tests/conftest.py) and takes work from the other when
# idle; loadfile sorted whole files largest-first, which left the two-test demo file alone at
# the end. The 15 slowest tests are printed at the end of every run.
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# The GPU check (benchmarks/gpu_check.py). `make gpu-wheels` here (with a network) fetches TRL,
# Liger-Kernel and the small packages a bare GPU image lacks into .gpu-wheels/; carry that
# folder to the GPU box, where `make gpu-check` runs with the image's own python (no venv).
GPU_PYTHON ?= python3
GPU_OUT ?= benchmarks/results/gpu-check-$(shell date -u +%Y-%m-%d-%H%M)

gpu-wheels: $(STAMP)
	$(PY) benchmarks/gpu_wheels.py .gpu-wheels

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --out $(GPU_OUT)

gpu-check-dry: $(STAMP)
	$(PY) benchmarks/gpu_check.py --dry --out $(GPU_OUT)-dry
