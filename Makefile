# One entry point for newcomers and CI. Every target sets up what it needs itself.
#   make demo   set up, run every method on the built-in synthetic set (seed 0), print Table 1
#   make test   set up, lint, run the test suite
#   make gate   run the quick benchmark (all 13 methods on the shipped real PneumoniaMNIST,
#               PaDiM and PatchCore on synthetic) and fail if any seed's AUC moved beyond the
#               tolerance of results/reference/{pneumoniamnist,synthetic}.json
#   make reference  re-record those references from the gate's runs (on purpose only)
#   make reports    regenerate the committed reports/ (13 methods x 3 seeds x 4 settings)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
GATE_STORE := sqlite:///$(CURDIR)/results/ci-gate.db
REPORT_STORE := sqlite:///$(CURDIR)/results/reports.db
REPORT_SEEDS := 0,1,2

.PHONY: setup demo test lint gate gate-runs reference reports clean

# scripts/install_env.py installs with uv (pip's settings handed over; pip where uv fails):
# a fresh set-up on 2 cores takes about 36 s instead of pip's 92 s.
$(STAMP): pyproject.toml scripts/install_env.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python scripts/install_env.py '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# The report goes to results/reports/ (git-ignored): a newcomer's checkout stays clean.
demo: setup
	$(BIN)/bench run --methods all --dataset synthetic --seeds 0
	$(BIN)/bench report --dataset synthetic

lint: setup
	$(BIN)/ruff check .

# Two pytest workers of one torch thread each (tests/conftest.py); tests run file by file on a
# worker (--dist loadfile). On 2 cores: 632 tests in 366 s (issue 25; issue 14's 382 tests
# took 875 s in one process of two threads). The two workers keep both cores busy (95% of the
# time, sampled): running the gate beside them made everything slower, not faster. A test
# that sets more threads itself oversubscribes the cores beside the other worker.
PYTEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The CI regression gate: a fresh store, the committed references. Every method on seed 0 of
# real chest X-rays (the shipped PneumoniaMNIST); PaDiM and PatchCore (seconds each) on seeds
# 0-2 of synthetic, whose lesion masks check the pixel metrics. Two runs at a time, each
# pinned to one torch thread (--threads 1) on any machine: a GAN's AUC depends on the thread
# count, the references record it, and `bench check` refuses runs made with another.
GATE_REAL := pneumoniamnist
gate-runs: setup
	rm -f results/ci-gate.db
	$(BIN)/bench run --methods all --dataset $(GATE_REAL) --seeds 0 --no-progress --jobs 2 --threads 1 \
		--tracking-uri $(GATE_STORE)
	$(BIN)/bench run --methods padim,patchcore --dataset synthetic --seeds 0,1,2 --no-progress --threads 1 \
		--jobs 2 --tracking-uri $(GATE_STORE)

# Both checks run (and print) before the gate fails on either.
gate: gate-runs
	$(BIN)/bench report --dataset $(GATE_REAL) --out - --no-figures --no-log \
		--tracking-uri $(GATE_STORE)
	real=0; synth=0; \
	$(BIN)/bench check --dataset $(GATE_REAL) --against results/reference/$(GATE_REAL).json \
		--tracking-uri $(GATE_STORE) || real=$$?; \
	$(BIN)/bench check --dataset synthetic --against results/reference/synthetic.json \
		--tracking-uri $(GATE_STORE) || synth=$$?; \
	test $$real = 0 && test $$synth = 0

# Re-record the references (after an intended change; commit them with the change).
reference: gate-runs
	$(BIN)/bench check --dataset $(GATE_REAL) --update \
		--against results/reference/$(GATE_REAL).json --tracking-uri $(GATE_STORE)
	$(BIN)/bench check --dataset synthetic --update --against results/reference/synthetic.json \
		--tracking-uri $(GATE_STORE)

# The committed reports/: every method, seeds 0-2, on the real PneumoniaMNIST (two runs at a
# time, one thread each, as the gate: its seed 0 is the gate's), and on synthetic,
# synthetic-easy and the contaminated setting. Runs already in results/reports.db with the
# same key are skipped.
reports: setup
	$(BIN)/bench run --methods all --dataset pneumoniamnist --seeds $(REPORT_SEEDS) --jobs 2 \
		--no-progress --tracking-uri $(REPORT_STORE)
	$(BIN)/bench run --methods all --dataset synthetic --seeds $(REPORT_SEEDS) --no-progress \
		--tracking-uri $(REPORT_STORE)
	$(BIN)/bench run --methods all --dataset synthetic-easy --seeds $(REPORT_SEEDS) --no-progress \
		--tracking-uri $(REPORT_STORE)
	$(BIN)/bench run --methods all --dataset synthetic --seeds $(REPORT_SEEDS) --contaminated \
		--no-progress --tracking-uri $(REPORT_STORE)
	$(MAKE) report-files

REPORT_DATASETS := pneumoniamnist synthetic synthetic-easy
report-files: setup
	for fmt in md latex html; do \
	  ext=$$(case $$fmt in md) echo md;; latex) echo tex;; html) echo html;; esac); \
	  for name in $(REPORT_DATASETS); do \
	    $(BIN)/bench report --dataset $$name --format $$fmt --out reports/$$name.$$ext \
		  --no-log --tracking-uri $(REPORT_STORE) || exit 1; \
	  done; \
	  $(BIN)/bench report --dataset synthetic --contaminated --format $$fmt \
		--out reports/synthetic-contaminated.$$ext --no-log --tracking-uri $(REPORT_STORE) \
		|| exit 1; \
	done

clean:
	rm -rf results/cache results/*.db results/mlartifacts
