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

# The sections of docs/results.md, one target each; each script writes only its own section, with one torch
# thread (so a rerun gives the same digits on any machine), and finished steps resume from runs/. From a
# cold start about 9 hours of one CPU core; `make -j2 results` runs two sections at a time. The flat table
# runs two processes itself (--jobs 2, per-step locks on the shared work folder): 88 min cold on 2 cores. The collapse study's two seeds can also run side by side
# first, one `OMP_NUM_THREADS=1 dpp study collapse ... --seeds S` each (benchmarks/collapse_study.py).
# numpy's BLAS threads too: one thread for everything a results script computes
RESULTS_PY := OMP_NUM_THREADS=1 $(BIN)/python
RESULTS := results-flat results-labelers results-guidance results-guidance-dense results-collapse
.PHONY: $(RESULTS) results-textured
results: $(RESULTS)
results-flat: $(STAMP)
	$(RESULTS_PY) benchmarks/label_efficiency.py --jobs 2 --other-samplers ddim:25 --other-guidance 1 --ignore-above 0.1,0.2
results-labelers: $(STAMP)
	$(RESULTS_PY) benchmarks/labeler_variants.py --device cpu
results-guidance: $(STAMP)
	$(RESULTS_PY) benchmarks/guidance.py
results-guidance-dense: $(STAMP)
	$(RESULTS_PY) benchmarks/guidance.py --work runs/guidance-dense --dense-loss 1 --section guidance-dense \
		--scales 0,1,3,10,30,100
results-collapse: $(STAMP)
	$(RESULTS_PY) benchmarks/collapse_study.py

# The textured world's label-efficiency table (docs/results-textured.md), kept as a record: it needs
# results-guidance-dense's classifier and is not part of `make results` (see that file).
results-textured: results-guidance-dense
	$(RESULTS_PY) benchmarks/label_efficiency_textured.py --classifier runs/guidance-dense/classifier \
		--guidance-scale 30 --out docs/results-textured.md

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
