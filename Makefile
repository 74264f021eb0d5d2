# mdlm-course: two commands to start (see README.md).
#   make demo   set up .venv, then run the main job
#   make test   set up .venv, then run every test (notebooks included, in quick mode)
#   make lab    open JupyterLab on notebooks/ with the venv's kernel
#
# torch: CPU-only machines get the CPU wheel, never the multi-GB CUDA build. CUDA users pick their
# build with TORCH_INDEX, e.g.  make demo TORCH_INDEX=https://download.pytorch.org/whl/cu128

PYTHON        ?= python3
VENV          ?= .venv
BIN           := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_INDEX   ?=
CPU_INDEX     := https://download.pytorch.org/whl/cpu
STAMP         := $(VENV)/.installed

.PHONY: setup demo test test-fast lab bench gpu-check notebooks checkpoint clean

setup: $(STAMP)

$(STAMP): requirements.txt requirements-core.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 10), "mdlm-course needs Python 3.10+"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# 1) torch. Order: an explicit TORCH_INDEX; a wheel already on local disk (no network);
	@#    the CPU wheel index on a Linux box without nvidia-smi; else PyPI's default build.
	@if [ -n "$(TORCH_INDEX)" ]; then \
	  $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"; \
	elif $(BIN)/pip install -q --no-index --no-deps "torch==$(TORCH_VERSION)" 2>/dev/null; then \
	  echo "torch $(TORCH_VERSION): installed from a local wheel"; \
	elif [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
	  $(BIN)/pip install "torch==$(TORCH_VERSION)" --index-url "$(CPU_INDEX)" --extra-index-url https://pypi.org/simple; \
	fi
	@# 2) torch's own dependencies (or PyPI's torch, if nothing above applied), then the package.
	$(BIN)/pip install -q "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -q -r requirements.txt -e ".[dev]"
	@touch $@

demo: $(STAMP)
	$(BIN)/python -m mdlm_course demo

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

# The development loop: everything but notebooks, subprocesses, torch.compile and whole-corpus tests.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests

lab: $(STAMP)
	$(BIN)/python -m ipykernel install --user --name mdlm-course --display-name "mdlm-course (.venv)"
	cd notebooks && ../$(BIN)/jupyter lab $$([ "$$(id -u)" = 0 ] && echo --allow-root)

bench: $(STAMP)
	for f in bench/bench_*.py; do $(BIN)/python $$f || exit 1; done

# On a CUDA machine (< 5 minutes): bf16 and fp16 + GradScaler, eager and compiled; tokens/s and MFU.
gpu-check: $(STAMP)
	$(BIN)/python bench/gpu_check.py

# Re-execute every notebook for real (no quick mode) and save its outputs in place.
notebooks: $(STAMP)
	$(BIN)/python notebooks/run.py --inplace notebooks/[0-9]*.ipynb

# Regenerate the shipped checkpoints (hours on a laptop CPU; resumable: run it again after a stop). The
# script exports each run's best checkpoint into checkpoints/; checkpoints/README.md has the figures.
checkpoint: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} tools/train_checkpoint.sh

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
