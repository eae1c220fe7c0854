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

.PHONY: install demo test test-fast clean-venv adios2-mpi

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

# Rebuild the adios2 Python package with MPI (parallel store writes) against this venv's MPI and
# mpi4py; about 7 minutes on 2 cores. MPICC/MPICXX select a site MPI (e.g. MPICC=cc MPICXX=CC on Cray).
ADIOS2_VERSION ?= $(shell $(BIN)/python -c 'import importlib.metadata as m; print(m.version("adios2"))' 2>/dev/null)
MPICC ?= $(abspath $(BIN))/mpicc
MPICXX ?= $(abspath $(BIN))/mpicxx
ADIOS2_OFF := Fortran HDF5 HDF5_VOL SST ZeroMQ DataMan CURL OpenSSL Campaign Blosc2 BZip2 ZFP SZ SZ3 PNG \
	MGARD PRODM LIBPRESSIO BigWhoop Caliper DAOS DataSpaces MHS IME UCX Sodium Catalyst XRootD Profiling
adios2-mpi: $(STAMP)
	$(BIN)/python -m pip install --quiet -c $(VENV)/constraints.txt scikit-build-core cmake ninja pybind11 "setuptools_scm>=8"
	rm -rf $(VENV)/adios2-src && mkdir -p $(VENV)/adios2-src
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation "adios2==$(ADIOS2_VERSION)" -d $(VENV)/adios2-src
	tar xzf $(VENV)/adios2-src/adios2-*.tar.gz -C $(VENV)/adios2-src
	@# adios2's pip build (ADIOS2_USE_PIP) never looks for mpi4py, so with MPI on it silently drops the
	@# Python bindings; make that branch find mpi4py too.
	sed -i 's|^\(  set(ADIOS2_HAVE_PIP TRUE)\)|  if(ADIOS2_HAVE_MPI)\n    find_package(PythonModule REQUIRED COMPONENTS mpi4py mpi4py/mpi4py.h)\n  endif()\n\1|' \
		$(VENV)/adios2-src/adios2-*/cmake/DetectOptions.cmake
	PATH="$(abspath $(BIN)):$$PATH" CMAKE_BUILD_PARALLEL_LEVEL=$${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
	$(BIN)/python -m pip install --no-deps --no-build-isolation --force-reinstall --no-binary adios2 \
		$$(ls -d $(VENV)/adios2-src/adios2-*/) -C cmake.build-type=Release \
		-C cmake.define.MPI_C_COMPILER=$(MPICC) -C cmake.define.MPI_CXX_COMPILER=$(MPICXX) \
		-C cmake.define.Python_EXECUTABLE=$(abspath $(BIN))/python \
		-C cmake.define.BUILD_TESTING=OFF -C cmake.define.ADIOS2_BUILD_EXAMPLES=OFF \
		-C cmake.define.ADIOS2_USE_MPI=ON -C cmake.define.ADIOS2_USE_Python=ON -C cmake.define.ADIOS2_USE_PIP=ON \
		$(foreach opt,$(ADIOS2_OFF),-C cmake.define.ADIOS2_USE_$(opt)=OFF)
	$(BIN)/python -c 'import adios2, sys; print("adios2 with MPI:", adios2.is_built_with_mpi); sys.exit(not adios2.is_built_with_mpi)'
