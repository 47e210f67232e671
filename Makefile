# Two commands on a fresh machine: `make demo` and `make test`. Each creates .venv if missing,
# installs the project with its pinned stack (constraints.txt) and Chromium for the browser tests
# (tests/ensure_browser.sh: apt-get when chromium or chromedriver is missing), then runs.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.dpp-installed

.PHONY: demo test bench results generator lint install clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	bash tests/ensure_browser.sh
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dpp demo --out demo-out

test: $(STAMP)
	$(BIN)/python -m pytest -q

# docs/benchmarks.md (about 1.5 hours on 2 CPU cores; finished load sizes are reused from runs/bench-load,
# the 100,000-sample corpus of benchmarks/view.py from runs/bench-view).
bench: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/perf.py --n 64 --repeats 3
	$(BIN)/python benchmarks/load.py
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/view.py

# The tables of docs/results.md, in dependency order (the guidance classifiers before the textured
# table's guided row). Each script writes its own section; finished steps resume from runs/. From a
# cold start about 9 hours on 2 CPU cores (the flat table and the collapse study about 3 each; the study's
# two seeds can run side by side first, one `dpp study collapse ... --seeds S` each: benchmarks/collapse_study.py).
results: $(STAMP)
	$(BIN)/python benchmarks/label_efficiency.py --other-samplers ddim:25 --ignore-above 0.1,0.2
	$(BIN)/python benchmarks/labeler_variants.py --device cpu
	$(BIN)/python benchmarks/guidance.py
	$(BIN)/python benchmarks/guidance.py --work runs/guidance-dense --dense-loss 1 --section guidance-dense \
		--scales 0,1,3,10,30,100
	$(BIN)/python benchmarks/label_efficiency_textured.py --classifier runs/guidance-dense/classifier \
		--guidance-scale 30
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/collapse_study.py

# The shipped generator, rebuilt from scratch in resumable pieces: each call trains MINUTES more (default 60)
# from runs/generator/checkpoint, then exports the EMA weights; repeat until STEPS. The learning rate is
# constant until DECAY_FROM, then falls linearly to 0 at STEPS (see training/README.md).
MINUTES ?= 60
STEPS ?= 22000
DECAY_FROM ?= 16657
generator: $(STAMP)
	test -f runs/flat-train/corpus.json || $(BIN)/dpp toyworld --n 20000 --seed 0 --out runs/flat-train
	OMP_NUM_THREADS=1 $(BIN)/dpp train-generator --data runs/flat-train --out runs/generator \
		--class-conditional --snr-gamma 5 --steps $(STEPS) --decay-from $(DECAY_FROM) --time-limit $(MINUTES) \
		$$(test -f runs/generator/checkpoint/state.json && echo --resume)

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf demo-out .pytest_cache
