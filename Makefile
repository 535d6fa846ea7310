# `make demo` and `make test` set everything up on a fresh machine (.venv) and run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo lint test benchmark clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev,sweep]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) -m moshi_knowledge experiment=demo hydra.run.dir=runs/demo

lint: $(STAMP)
	$(VENV)/bin/ruff check moshi_knowledge tests benchmarks

# two workers, each test file in one of them (its fixtures built once); tests/conftest.py gives each one thread
test: lint
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder

benchmark: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf runs .cache/moshi-knowledge
