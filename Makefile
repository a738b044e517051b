# The two entry points of the README: `make bench` and `make test` (each sets up first).
PYTHON ?= python3

.PHONY: setup test bench cuda-check

setup:
	PYTHON=$(PYTHON) bash scripts/setup.sh

cuda-check:
	$(PYTHON) scripts/check_cuda_compile.py

test: setup cuda-check
	$(PYTHON) -m pytest -q

bench: setup
	$(PYTHON) -m benchmarks.run
