# The README's two commands: `make lab` and `make test`. Each sets up .venv when
# missing (pinned dev set: the CPU torch these machines hold, then blocklab editable
# with its test extras) and reuses it on the next call.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup test lab bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_PIN)"
	$(PY) -m pip install --quiet -e ".[dev,lab]" "$(TORCH_PIN)"
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/blocklab lab --quick --out lab-report $(LAB_ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) lab-report .pytest_cache
