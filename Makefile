# The workbook's commands. Each bootstraps .venv when it is missing.
PY := .venv/bin/python
export HF_HUB_OFFLINE := 1
export PYTHONHASHSEED := 0

.PHONY: venv test test-fast reproduce toy-model toy-check bench clean-cache

venv: .venv/.installed
.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

test: venv
	$(PY) -m pytest -q tests

toy-model: venv
	$(PY) -m elbo_lib.toy.train --out data/toy-sd --work-dir .cache/toy-train

toy-check: venv
	$(PY) -m elbo_lib.toy.check --json data/toy-sd/quality.json

reproduce: venv
	$(PY) -m elbo_lib.toy.check --json figures/toy_quality.json

bench: venv
	$(PY) benchmarks/bench_aligner.py

clean-cache:
	rm -rf .cache/elbo_lib
