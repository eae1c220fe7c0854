# gfmkit: `make demo` and `make test` from a fresh clone with only Python >= 3.10 and pip.
#
# Overridable:
#   PYTHON       interpreter that creates the venv            (python3)
#   VENV         where the venv lives                         (.venv)
#   TORCH_SPEC   torch requirement installed first            (torch==2.13.0; a site may give a CUDA/ROCm build)
#   TORCH_ARGS   extra pip arguments for torch only           (e.g. --index-url https://download.pytorch.org/whl/rocm6.4)
#   EXTRAS       gfmkit extras                                (all,mpich; use EXTRAS=all with a site MPI)
#   PYTEST_ARGS  extra pytest arguments                       (e.g. -k store -x)
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_ARGS ?=
EXTRAS ?= all,mpich
PYTEST_ARGS ?=
DEMO_OUT ?= runs/demo

BIN := $(VENV)/bin
# The stamp's name carries the install arguments, so changing any of them reinstalls, and nothing else does.
INSTALL_KEY := $(shell printf '%s|%s|%s' '$(TORCH_SPEC)' '$(TORCH_ARGS)' '$(EXTRAS)' | cksum | cut -d' ' -f1)
STAMP := $(VENV)/.gfmkit-installed-$(INSTALL_KEY)

.PHONY: install demo test test-fast clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_ARGS)
	@# Pin whatever torch build is now installed, so that no later dependency replaces it.
	$(BIN)/python -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > $(VENV)/constraints.txt
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	@rm -f $(VENV)/.gfmkit-installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/gfmkit demo --out $(DEMO_OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
