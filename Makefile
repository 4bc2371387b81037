# One entry point for set-up, the benchmark, the tests and the docs.
# `make bench` and `make test` install everything they need on a fresh machine.
PYTHON ?= python3
STAMP := .install-stamp

.PHONY: install bench test docs clean

# The pinned CPU wheel of torch goes first: an unpinned torch would pull a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m pip install --quiet "torch==2.13.0"
	$(PYTHON) -m pip install --quiet -e ".[test,bench,dist]"
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(PYTHON) -m benchmarks quick

test: $(STAMP)
	$(PYTHON) -m pytest -q

docs: $(STAMP)
	$(PYTHON) -m pip install --quiet -e ".[docs]"
	$(PYTHON) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(STAMP) docs/_build docs/generated .pytest_cache
