# One entry point for newcomers and CI. Every target sets up what it needs itself.
#   make demo   set up, run every method on the built-in synthetic set (seed 0), print Table 1
#   make test   set up, lint, run the test suite
#   make gate   run the quick synthetic benchmark and fail if an AUC regressed
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
GATE_STORE := sqlite:///$(CURDIR)/results/ci-gate.db

.PHONY: setup demo test lint gate clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/bench run --methods all --dataset synthetic --seeds 0
	$(BIN)/bench report --dataset synthetic

lint: setup
	$(BIN)/ruff check .

test: lint
	$(BIN)/pytest -q

# The CI regression gate: a fresh store, the committed reference.
gate: setup
	rm -f results/ci-gate.db
	$(BIN)/bench run --methods padim,patchcore --dataset synthetic --seeds 0,1 --no-progress \
		--tracking-uri $(GATE_STORE)
	$(BIN)/bench report --dataset synthetic --out - --tracking-uri $(GATE_STORE)
	$(BIN)/bench check --dataset synthetic --against results/reference/synthetic.json \
		--tracking-uri $(GATE_STORE)

clean:
	rm -rf results/cache results/*.db results/mlartifacts
