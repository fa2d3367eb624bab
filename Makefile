# `make demo` and `make test` set everything up on a fresh machine: they create .venv and
# install the project into it once (a second run installs nothing). Both install the `demo`
# extra (scikit-learn, tqdm, matplotlib), so the tests of the demo run too, and the
# `distributed` extra (mpi4py, MPICH's mpiexec), so the 2-process MPI tests run, and the
# `cuda` extra, so the CUDA backend's tests run on Numba's CUDA simulator.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean fuzz

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,demo,distributed,cuda]'
	# Bytecode, as pip writes for a regular install (an editable one leaves it to the first
	# import, which some environments forbid): 0.2-0.3 s of every process's first call.
	$(PY) -m compileall -q fusejit
	# The trampolines through which the runtime calls compiled kernels, into Numba's cache
	# (fusejit/runtime/native_calls.py): 72 in ~9 s once, instead of ~50 ms in a first call each;
	# and the math library the LLVM-printed kernels link (fusejit/runtime/llvm_kernels.py).
	$(PY) -m fusejit.runtime.native_calls
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/train_digits.py

test: $(STAMP)
	$(PY) -m pytest -q -n 2 tests

bench: $(STAMP)
	$(PY) -m fusejit bench

# The differential fuzzer: 10,000 random programs as NumPy, eager, interpreted, unfused and
# fused; prints counts by configuration and every new failure kind, shrunk, with its seed.
# One worker process per core (about 0.8 programs/s each).
fuzz: $(STAMP)
	$(PY) -m fusejit.testing.fuzz --count 10000 --seed 0 --jobs $(shell nproc)

lint: $(STAMP)
	$(PY) -m ruff check fusejit tests bench examples

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
