#!/usr/bin/env bash
# Builds .venv-bench: a separate virtual environment with the benchmark peers of gfmkit's PaiNN
# (schnetpack and HydraGNN) beside gfmkit itself, for benchmarks/model_speed.py.
#
#   bash benchmarks/setup_peers.sh [HYDRAGNN_SRC]
#
# HYDRAGNN_SRC (argument, or environment variable of that name): where HydraGNN's source is. Either
#   - a source tree, i.e. a directory that contains the `hydragnn` package (hydragnn/models/PAINNStack.py), or
#   - a git directory of a clone of github.com/ORNL/HydraGNN (bare or not): its HEAD is exported with
#     `git archive` into .venv-bench/hydragnn-src.
#   Get one with `git clone https://github.com/ORNL/HydraGNN` wherever GitHub is reachable. HydraGNN is
#   run from there, beside the project: it is never copied into gfmkit, installed, or committed. Without
#   HYDRAGNN_SRC the script still builds the environment, and the benchmark runs schnetpack only.
#
# Other overridable variables:
#   PYTHON       interpreter that creates the venv     (python3)
#   VENV         where the venv lives                  (.venv-bench, at the repository root)
#   TORCH_SPEC   torch requirement, installed first    (torch==2.13.0; pip finds a local wheel where one is configured)
#
# What it installs, and why:
#   - torch first, then everything else under a constraints file that pins the torch now installed, so
#     no peer replaces it;
#   - schnetpack (pip resolves 2.0.4 on torch 2.13: 2.1.x pins sympy<=1.12, which torch's sympy
#     requirement excludes); it needs a shim for `T_co`, which benchmarks/peers.py installs at import;
#   - torch_geometric, ase, vesin, numpy, and gfmkit editable (--no-deps) with its runtime deps;
#   - what HydraGNN's PAINNStack import chain needs that pip provides: mpi4py with the mpich wheel (its
#     tracer imports MPI), psutil, tqdm, tensorboard (torch.utils.tensorboard), e3nn (global attention
#     modules that Base imports). torch_scatter has no wheel for this torch (pip would build it from
#     source); HydraGNN's PaiNN path imports it but calls none of it, so benchmarks/peers.py registers a
#     stand-in only when the real one is missing.
# The versions installed (and HydraGNN's commit) are written to $VENV/peers-versions.txt.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv-bench}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
HYDRAGNN_SRC="${1:-${HYDRAGNN_SRC:-}}"
BIN="$VENV/bin"

test -x "$BIN/python" || "$PYTHON" -m venv "$VENV"
"$BIN/python" -m pip install --quiet --upgrade pip
"$BIN/python" -m pip install --quiet "$TORCH_SPEC"
"$BIN/python" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > "$VENV/constraints.txt"
PIP=("$BIN/python" -m pip install --quiet -c "$VENV/constraints.txt")

"${PIP[@]}" schnetpack torch_geometric ase vesin numpy
"${PIP[@]}" pandas matplotlib tqdm pyyaml adios2
"${PIP[@]}" --no-deps -e .
"${PIP[@]}" mpi4py mpich psutil tensorboard e3nn

# HydraGNN's source: a tree used in place, or a git directory exported to $VENV/hydragnn-src.
COMMIT=unknown
if [ -n "$HYDRAGNN_SRC" ]; then
    if [ -f "$HYDRAGNN_SRC/hydragnn/models/PAINNStack.py" ]; then
        SRC="$(cd "$HYDRAGNN_SRC" && pwd)"
        COMMIT="$(git -C "$SRC" rev-parse HEAD 2>/dev/null || echo unknown)"
    elif git -C "$HYDRAGNN_SRC" rev-parse --git-dir >/dev/null 2>&1; then
        SRC="$ROOT/$VENV/hydragnn-src"
        rm -rf "$SRC" && mkdir -p "$SRC"
        git -C "$HYDRAGNN_SRC" archive HEAD | tar -x -C "$SRC"
        COMMIT="$(git -C "$HYDRAGNN_SRC" rev-parse HEAD)"
    else
        echo "HYDRAGNN_SRC=$HYDRAGNN_SRC is neither a tree with hydragnn/models/PAINNStack.py nor a git directory" >&2
        exit 1
    fi
    # benchmarks/peers.py reads these when HYDRAGNN_SRC is not set in its environment.
    echo "$SRC" > "$VENV/hydragnn-src.txt"
    echo "$COMMIT" > "$VENV/hydragnn-commit.txt"
else
    echo "HYDRAGNN_SRC not given: the benchmark will run without HydraGNN" >&2
fi

{
    "$BIN/python" - <<'EOF'
import importlib.metadata as m
for name in ["torch", "schnetpack", "torch_geometric", "ase", "vesin", "numpy", "mpi4py", "mpich", "e3nn",
             "tensorboard", "psutil", "sympy", "gfmkit"]:
    try:
        print(f"{name}=={m.version(name)}")
    except m.PackageNotFoundError:
        print(f"{name}: not installed")
EOF
    echo "hydragnn_commit=$COMMIT"
    echo "hydragnn_src=${SRC:-none}"
} | tee "$VENV/peers-versions.txt"
