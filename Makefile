# MusiCoder: `make demo` and `make test` bootstrap .venv on their own.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
PYTEST_ARGS ?=

export OMP_NUM_THREADS ?= 1
export MKL_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast bench gpu-bench lint clean science-kit bench-science

install: $(STAMP)

# Re-install only when the dependency list changes; the stamp keeps a second call fast.
# libchromaprint: the system library behind pyacoustid (per-sample fingerprints in the sharder).
$(STAMP): pyproject.toml
	ldconfig -p | grep -q 'libchromaprint\.so\.1' || \
	  { apt-get update -qq && apt-get install -y -qq --no-install-recommends libchromaprint1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) launch/demo.py

test: $(STAMP)
	$(PY) -m pytest --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -m 'not integration and not slow' $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) bench/features.py
	$(PY) bench/loader.py
	$(PY) bench/facts.py
	$(PY) bench/train_step.py

# Real-audio yardstick kit (DESIGN §12) in ~/.cache/musicoder/realdata or $MUSICODER_REALDATA;
# installs the Debian packages it needs (as root); a second run finds kit.json and stops.
science-kit: $(STAMP)
	$(PY) -m pip install --disable-pip-version-check -q -e '.[science]'
	$(PY) bench/science_kit.py

# Real-audio science yardstick (DESIGN §12): kit, then shard -> pretrain x3 seeds -> export ->
# probes on two tasks, 5 fold rotations x 3 probe seeds each; writes the table into
# BENCHMARKS.md (hours on 2 cores; SCIENCE_ARGS='--probe-seeds 1 --heads linear' for a quicker run).
bench-science: science-kit
	$(PY) bench/science.py $(SCIENCE_ARGS)

# On a CUDA machine without our dependencies: installs carried wheels (wheels/), then benchmarks.
gpu-bench:
	bash bench/gpu_bench.sh $(GPU_BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

lint: $(STAMP)
	$(VENV)/bin/ruff check musicoder launch bench tests
