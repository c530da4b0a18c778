# cxr: the two commands a newcomer needs are `make demo` and `make test`; both set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cxr-installed
PYTEST_ARGS ?=
# A second environment with onnxruntime-openvino (it replaces the onnxruntime module, so it cannot share .venv), no
# torch: the OpenVINO tests and bench rows run cxr through its python. Where its wheel cannot be had, they skip.
OV_VENV ?= .venv-ov
OV_PY := $(OV_VENV)/bin/python
OV_STAMP := $(OV_VENV)/.cxr-installed

.PHONY: demo test lint bench bench-e2e bench-ray real external cam-on-heart install clean fuzz

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned to the release that lies on this kind of machine's disk (never newer than 2.14.1).
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install -q -e ".[cpu,train,dev,ray]"
	touch $(STAMP)

$(OV_STAMP): pyproject.toml
	$(PYTHON) -m venv $(OV_VENV)
	$(OV_PY) -m pip install -q -e ".[openvino]" && touch $(OV_STAMP) \
		|| echo "make: onnxruntime-openvino could not be installed in $(OV_VENV); the OpenVINO tests and bench rows skip" >&2

install: $(STAMP)

test: $(STAMP) $(OV_STAMP) lint
	CXR_OV_PYTHON=$(abspath $(OV_PY)) $(PY) -m pytest -q $(PYTEST_ARGS)

# the reader fuzz suite at length: FUZZ_EXAMPLES random inputs per test (make test runs 25 fixed ones); a failure
# prints the input to add to tests/fixtures/hostile/
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	CXR_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(PY) -m pytest -q -p no:cacheprovider tests/runtime/test_fuzz_readers.py $(PYTEST_ARGS)

# ruff: pyflakes, bugbear, import order, lines <= 120 (pyproject.toml); part of make test, so CI fails on a finding
lint: $(STAMP)
	$(PY) -m ruff check cxr tests scripts benchmarks

demo: $(STAMP)
	$(PY) scripts/demo.py

real: $(STAMP)
	$(PY) scripts/real.py --mode real

# trains with one source left out and tests on all of it (wingspan+JSRT -> NIH, NIH+JSRT -> wingspan); add
# EXTERNAL_ARGS=--baseline to measure today's recipe the same way, or EXTERNAL_ARGS="--only B,C --teach" for B and C
# each taught by its own plain run's masks on the NIH films, or EXTERNAL_ARGS="--only A --shift-average 4" to also
# score the NIH films with the probability averaged over nine small moves of each film
external: $(STAMP)
	$(PY) scripts/real.py --mode external $(EXTERNAL_ARGS)

bench: $(STAMP) $(OV_STAMP)
	CXR_OV_PYTHON=$(abspath $(OV_PY)) $(PY) scripts/bench.py

# cxr-score end to end vs the session alone, fp32 and auto's pick, in turn (OpenVINO where .venv-ov has it):
# make bench-e2e MODEL=model.onnx FOLDER=pngs [E2E_ARGS="--images 300 --rounds 3 --json e2e.json"]
bench-e2e: $(STAMP) $(OV_STAMP)
	@test -n "$(MODEL)" -a -n "$(FOLDER)" || { echo "usage: make bench-e2e MODEL=model.onnx FOLDER=pngs" >&2; exit 2; }
	$(if $(wildcard $(OV_STAMP)),$(OV_PY),$(PY)) benchmarks/e2e_precision.py "$(MODEL)" "$(FOLDER)" $(E2E_ARGS)

# does the activation map lie on the heart? make cam-on-heart MODEL=m.onnx FOLDER=imgs LABELS=l.csv [LABEL_COLUMN=c]
cam-on-heart: $(STAMP)
	@test -n "$(MODEL)" -a -n "$(FOLDER)" -a -n "$(LABELS)" || { echo "usage: make cam-on-heart MODEL=model.onnx \
	FOLDER=images LABELS=labels.csv [LABEL_COLUMN=label]" >&2; exit 2; }
	$(PY) scripts/cam_on_heart.py "$(MODEL)" "$(FOLDER)" "$(LABELS)" $(if $(LABEL_COLUMN),--label-column "$(LABEL_COLUMN)")

# local engine vs --engine ray on 200 1024x1024 PNGs and the driver's memory on 100,000 listed paths (about 15 minutes)
bench-ray: $(STAMP)
	$(PY) scripts/bench_ray.py $(BENCH_RAY_ARGS)

clean:
	rm -rf $(VENV) $(OV_VENV) demo_out real_out external_out .pytest_cache .benchmarks
