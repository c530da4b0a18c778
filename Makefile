# cxr: the two commands a newcomer needs are `make demo` and `make test`; both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxr-installed
PYTEST_ARGS ?=

.PHONY: demo test lint bench bench-ray real external install clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to the release that lies on this kind of machine's disk (never newer than 2.14.1).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[cpu,train,dev,ray]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP) lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# ruff: pyflakes, bugbear, import order, lines <= 120 (pyproject.toml); part of make test, so CI fails on a finding
lint: $(STAMP)
	$(PY) -m ruff check cxr tests scripts benchmarks

demo: $(STAMP)
	$(PY) scripts/demo.py

real: $(STAMP)
	$(PY) scripts/real.py --mode real

# trains with one source left out and tests on all of it (wingspan+JSRT -> NIH, NIH+JSRT -> wingspan); add
# EXTERNAL_ARGS=--baseline to measure today's recipe the same way
external: $(STAMP)
	$(PY) scripts/real.py --mode external $(EXTERNAL_ARGS)

bench: $(STAMP)
	$(PY) scripts/bench.py

# local engine vs --engine ray on 200 1024x1024 PNGs and the driver's memory on 100,000 listed paths (about 15 minutes)
bench-ray: $(STAMP)
	$(PY) scripts/bench_ray.py $(BENCH_RAY_ARGS)

clean:
	rm -rf $(VENV) demo_out real_out external_out .pytest_cache .benchmarks
