# The two commands of the README: `make demo` and `make test`. Both create .venv if needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-slow bench lint docs
.PHONY: typecheck package-check

# Reinstall when pyproject.toml changes: the editable install maps chaosgrad.systems and
# chaosgrad.estimators onto the top-level folders at install time.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/chaosgrad demo --out out/demo

test: $(STAMP)
	XLA_FLAGS="--xla_backend_optimization_level=0 $(XLA_FLAGS)" $(BIN)/python -m pytest -q -n auto --dist loadfile

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[all,dev,bench]"
	touch $(BENCH_STAMP)

# One table (figure, ours, baseline, ratio with spread, goal, meets goal), also saved to
# benchmarks/results/bench.txt and bench.json. About 5 minutes on a 2-core CPU once installed.
bench: $(BENCH_STAMP)
	$(BIN)/python benchmarks/bench.py

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

# mypy over chaosgrad, chaosgrad.systems and chaosgrad.estimators ([tool.mypy] in pyproject.toml)
typecheck: $(STAMP)
	.ci/typecheck

# sdist + wheel, twine check, the wheel's contents, a fresh install running the README example
package-check: $(STAMP)
	.ci/package_check

DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[all,dev,docs]"
	touch $(DOCS_STAMP)

# The documentation site, built strictly (a warning fails it) into site/: open site/index.html,
# or serve it with `.venv/bin/mkdocs serve`. The notebooks run at their quick scale as their
# pages are built, so their figures are this build's.
docs: $(DOCS_STAMP)
	CHAOSGRAD_NOTEBOOK_SCALE=quick CHAOSGRAD_NOTEBOOK_OUT=$(CURDIR)/out/docs-notebooks \
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict
