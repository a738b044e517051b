# The two entry points of the README: `make bench` and `make test` (each sets up first), and
# `make gpu-ready` (the CUDA build checked without a GPU; RECORD=1 rewrites the table in docs/gpu.md).
PYTHON ?= python3

.PHONY: setup test bench cuda-check gpu-ready

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

cuda-check:
	$(PYTHON) scripts/check_cuda_compile.py

test: setup cuda-check
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) -m benchmarks.run $(if $(RECORD),--record)

gpu-ready:
	$(PYTHON) scripts/gpu_ready/main.py $(if $(RECORD),--record)
