"""Benchmark peers of gfmkit's PaiNN: schnetpack's and HydraGNN's, built like gfmkit's model and fed
the same neighbour lists. Not part of gfmkit and not a test; run it in .venv-bench
(``bash benchmarks/setup_peers.sh``), e.g. ``.venv-bench/bin/python benchmarks/peers.py`` checks the
wiring of every available model (finite energies and forces, forces = -dE/dx by finite differences,
periodic images via a 2x1x1 supercell).

Every model gets, for the same list of periodic ``ase.Atoms``:

- hyperparameters: 128 features, 3 interaction layers, 20 radial functions, cutoff 5 Å, an atom-wise
  energy MLP 128 -> 64 -> 1 (SiLU) summed per structure, forces = -dE/dpos by autograd;
- the same neighbour list: :func:`gfmkit.data.neighbours.neighbour_list` (vesin, full list, integer
  cell shifts; gfmkit's edges are ``[j, i]`` with ``r_ij = pos[j] - pos[i] + shift @ cell``),
  translated into each peer's own convention (below); every model forms its edge vectors from
  positions inside autograd, so forces see periodic images;
- the same dtype (float32 or float64), labels (EMT energies and forces), loss
  (MSE(energy) + MSE(forces)), and optimiser (AdamW, lr 1e-4).

Peer conventions (checked by :func:`check_model`):

- schnetpack 2.0.4: ``NeuralNetworkPotential(PaiNN, [PairwiseDistances], [Atomwise, Forces])``, its
  defaults for PaiNN (GaussianRBF(20) + CosineCutoff, as in its ``painn.yaml``). Inputs ``_idx_i`` =
  centre (gfmkit ``edge_index[1]``), ``_idx_j`` = neighbour (``edge_index[0]``), ``_offsets`` =
  ``shift @ cell`` in Å; PairwiseDistances forms ``R[j] - R[i] + offsets``. Shim: torch removed
  ``T_co`` from ``torch.utils.data.dataloader``; schnetpack imports it, so it is put back before import.
  GaussianRBF builds float32 buffers: the model is built in float32, then cast.
- HydraGNN (commit in .venv-bench/hydragnn-commit.txt): ``PAINNStack`` built with the arguments its
  ``create_model`` passes for ``mpnn_type="PAINN"``, a node head ``mlp`` [64] (per-atom energy) and
  SiLU; total energy = sum of node outputs per structure, forces = -autograd.grad(E, pos), as its
  ``EnhancedModelWrapper.energy_force_loss`` does for MLIPs (without its ``.float()`` casts, which would
  turn float64 runs into float32 losses). Its periodic pipeline (``RadiusGraphPBC``) stores
  ``edge_index = [i, j]`` (i = centre, receiving the message in ``PainnMessage``) and Cartesian
  ``edge_shifts = S @ cell``, and ``get_edge_vectors_and_lengths`` forms ``pos[j] - pos[i] +
  edge_shifts`` inside autograd: gfmkit's lists are passed that way (rows flipped, shifts times cell).
  HydraGNN's node features ``x`` are fixed inputs (no learned embedding without global attention); its
  MLIP examples use ``input_dim=1`` (x = Z), which makes the first interaction 1 feature wide. Here
  ``x`` is one-hot Z in 128 features (``input_dim=128``), so that all three interactions work at 128
  like the others (``hydragnn_x="z"`` gives the example configuration instead).
  Shims (only for this process): stand-in parent packages ``hydragnn`` and ``hydragnn.models`` whose
  ``__init__`` would import all of HydraGNN's training, preprocessing and every model stack, and a
  ``torch_scatter`` stand-in when the real one is missing (HydraGNN's ``Base`` imports it but the
  PaiNN path calls none of it). HydraGNN's PaiNN code itself is imported unchanged from its source
  tree, which is never copied into gfmkit.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
HIDDEN, LAYERS, N_RBF, CUTOFF, HEAD_HIDDEN = 128, 3, 20, 5.0, 64
LEARNING_RATE = 1e-4


# ----------------------------------------------------------------------------------------------
# Structures and the shared neighbour list
# ----------------------------------------------------------------------------------------------


def cuau_cells(count: int, *, seed: int = 0, a: float = 3.8, repeat: int = 2, rattle: float = 0.1) -> list:
    """Random periodic CuAu cells: fcc ``repeat``^3 conventional supercells (32 atoms for 2), ~50/50 Cu/Au
    at random sites, positions rattled (Gaussian, ``rattle`` Å), labelled with EMT energy and forces."""
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(count):
        atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((repeat, repeat, repeat))
        numbers = np.full(len(atoms), 29)
        numbers[rng.permutation(len(atoms))[: len(atoms) // 2]] = 79
        atoms.set_atomic_numbers(numbers)
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["energy"] = float(atoms.get_potential_energy())
        atoms.arrays["ref_forces"] = atoms.get_forces().copy()
        atoms.calc = None
        cells.append(atoms)
    return cells


def label_arrays(atoms) -> tuple[float, np.ndarray]:
    energy = float(atoms.info.get("energy", 0.0))
    forces = atoms.arrays.get("ref_forces", np.zeros((len(atoms), 3)))
    return energy, np.asarray(forces, dtype=np.float64)


def neighbours(atoms_list: Sequence, cutoff: float = CUTOFF) -> list[tuple[np.ndarray, np.ndarray]]:
    """gfmkit's neighbour list of each structure: (edge_index [j, i] (2, E), integer shift (E, 3))."""
    from gfmkit.data.neighbours import neighbour_list

    return [neighbour_list(a.positions, np.asarray(a.cell), a.pbc, cutoff) for a in atoms_list]


@dataclass
class Concatenated:
    """A batch in plain arrays: atoms and edges of all structures, edges offset to batch numbering."""

    numbers: np.ndarray  # (N,)
    positions: np.ndarray  # (N, 3)
    graph: np.ndarray  # (N,) structure of each atom
    centre: np.ndarray  # (E,) i
    neighbour: np.ndarray  # (E,) j
    offsets: np.ndarray  # (E, 3) shift @ cell, Å
    energy: np.ndarray  # (B,)
    forces: np.ndarray  # (N, 3)
    cells: np.ndarray  # (B, 3, 3)
    natoms: np.ndarray  # (B,)


def concatenate(atoms_list: Sequence, lists: Sequence[tuple[np.ndarray, np.ndarray]]) -> Concatenated:
    numbers, positions, graph, centre, neighbour, offsets, energy, forces = [], [], [], [], [], [], [], []
    start = 0
    for k, (atoms, (edge_index, shift)) in enumerate(zip(atoms_list, lists)):
        n = len(atoms)
        numbers.append(atoms.numbers)
        positions.append(atoms.positions)
        graph.append(np.full(n, k))
        neighbour.append(edge_index[0] + start)
        centre.append(edge_index[1] + start)
        offsets.append(shift.astype(np.float64) @ np.asarray(atoms.cell, dtype=np.float64))
        e, f = label_arrays(atoms)
        energy.append(e)
        forces.append(f)
        start += n
    return Concatenated(
        numbers=np.concatenate(numbers).astype(np.int64),
        positions=np.concatenate(positions),
        graph=np.concatenate(graph).astype(np.int64),
        centre=np.concatenate(centre).astype(np.int64),
        neighbour=np.concatenate(neighbour).astype(np.int64),
        offsets=np.concatenate(offsets),
        energy=np.asarray(energy),
        forces=np.concatenate(forces),
        cells=np.stack([np.asarray(a.cell, dtype=np.float64) for a in atoms_list]),
        natoms=np.asarray([len(a) for a in atoms_list], dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# A model under test: one interface for all
# ----------------------------------------------------------------------------------------------


@dataclass
class Runner:
    """One model on one batch. ``predict(training)`` returns (energy (B,), forces (N, 3)); with
    ``training`` the graph is kept for a loss on forces (double backward)."""

    name: str
    model: nn.Module
    predict: Callable[[bool], tuple[torch.Tensor, torch.Tensor]]
    positions: torch.Tensor  # the tensor the model reads positions from (edit in place under no_grad)
    energy_ref: torch.Tensor
    forces_ref: torch.Tensor
    optimizer: torch.optim.Optimizer | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=LEARNING_RATE)

    def infer(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: energy and forces (no graph kept)."""
        self.model.eval()
        energy, forces = self.predict(False)
        return energy.detach(), forces.detach()

    def train_step(self) -> float:
        """One training step: MSE(energy) + MSE(forces), backward through the forces, AdamW step."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        energy, forces = self.predict(True)
        loss = torch.mean((energy - self.energy_ref) ** 2) + torch.mean((forces - self.forces_ref) ** 2)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def step(self) -> float:
        """Inference energy + forces, then one training step."""
        self.infer()
        return self.train_step()

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)


def _labels(batch: Concatenated, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(batch.energy, dtype=dtype), torch.tensor(batch.forces, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# schnetpack
# ----------------------------------------------------------------------------------------------


def import_schnetpack() -> types.ModuleType:
    """``import schnetpack`` with the ``T_co`` shim (torch >= 2.11 removed it from dataloader)."""
    from torch.utils.data import dataloader

    if not hasattr(dataloader, "T_co"):
        from typing import TypeVar

        dataloader.T_co = TypeVar("T_co", covariant=True)
    import schnetpack

    return schnetpack


def build_schnetpack(atoms_list: Sequence, dtype: torch.dtype = torch.float32, *, seed: int = 0,
                     lists: Sequence | None = None, device: str = "cpu") -> Runner:
    spk = import_schnetpack()
    import schnetpack.properties as P

    lists = neighbours(atoms_list) if lists is None else lists
    batch = concatenate(atoms_list, lists)
    torch.manual_seed(seed)
    representation = spk.representation.PaiNN(
        n_atom_basis=HIDDEN,
        n_interactions=LAYERS,
        radial_basis=spk.nn.radial.GaussianRBF(n_rbf=N_RBF, cutoff=CUTOFF),
        cutoff_fn=spk.nn.cutoff.CosineCutoff(CUTOFF),
    )
    model = spk.model.NeuralNetworkPotential(
        representation=representation,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[
            spk.atomistic.Atomwise(n_in=HIDDEN, n_hidden=HEAD_HIDDEN, n_layers=2, output_key=P.energy),
            spk.atomistic.Forces(energy_key=P.energy, force_key=P.forces),
        ],
        do_postprocessing=False,
    )
    model = model.to(dtype).to(device)  # built in float32 (GaussianRBF's buffers are float32), then cast
    inputs = {
        P.Z: torch.from_numpy(batch.numbers),
        P.R: torch.tensor(batch.positions, dtype=dtype),
        P.idx_i: torch.from_numpy(batch.centre),
        P.idx_j: torch.from_numpy(batch.neighbour),
        P.offsets: torch.tensor(batch.offsets, dtype=dtype),
        P.idx_m: torch.from_numpy(batch.graph),
        P.n_atoms: torch.from_numpy(batch.natoms),
        P.cell: torch.tensor(batch.cells, dtype=dtype),
        P.pbc: torch.ones(len(atoms_list), 3, dtype=torch.bool),
    }
    inputs = {key: value.to(device) for key, value in inputs.items()}
    positions = inputs[P.R]

    def predict(training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        # Forces uses create_graph=self.training; Runner sets train()/eval() before calling.
        out = model(dict(inputs))  # a fresh dict: the model writes intermediate keys into it
        return out[P.energy], out[P.forces]

    energy_ref, forces_ref = (t.to(device) for t in _labels(batch, dtype))
    return Runner("schnetpack", model, predict, positions, energy_ref, forces_ref,
                  info={"version": _version("schnetpack"), "radial_basis": "GaussianRBF + CosineCutoff"})


# ----------------------------------------------------------------------------------------------
# HydraGNN
# ----------------------------------------------------------------------------------------------


def hydragnn_source() -> Path | None:
    """HydraGNN's source tree: $HYDRAGNN_SRC, else what setup_peers.sh recorded, else None."""
    candidates = [os.environ.get("HYDRAGNN_SRC")]
    recorded = ROOT / ".venv-bench" / "hydragnn-src.txt"
    if recorded.exists():
        candidates.append(recorded.read_text().strip())
    for candidate in candidates:
        if candidate and (Path(candidate) / "hydragnn" / "models" / "PAINNStack.py").exists():
            return Path(candidate)
    return None


def hydragnn_commit(src: Path | None = None) -> str:
    recorded = ROOT / ".venv-bench" / "hydragnn-commit.txt"
    if recorded.exists():
        return recorded.read_text().strip()
    if src is not None:
        import subprocess

        done = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], check=False, capture_output=True, text=True)
        if done.returncode == 0:
            return done.stdout.strip()
    return "unknown"


SHIMS: list[str] = []


def _torch_scatter_standin() -> types.ModuleType:
    """A minimal ``torch_scatter`` for HydraGNN's imports (its PaiNN path calls none of it)."""
    from torch_geometric.utils import scatter

    module = types.ModuleType("torch_scatter")
    module.__doc__ = "benchmark stand-in for torch_scatter (benchmarks/peers.py), via torch_geometric.utils.scatter"

    def make(reduce: str):
        def fn(src, index, dim=-1, out=None, dim_size=None, **_):
            if out is not None:
                raise NotImplementedError("torch_scatter stand-in: out= is not supported")
            return scatter(src, index, dim=dim, dim_size=dim_size, reduce=reduce)

        return fn

    module.scatter = lambda src, index, dim=-1, out=None, dim_size=None, reduce="sum": make(reduce)(src, index, dim, out, dim_size)
    for name, reduce in [("scatter_add", "sum"), ("scatter_sum", "sum"), ("scatter_mean", "mean"),
                         ("scatter_max", "max"), ("scatter_min", "min"), ("scatter_mul", "mul")]:
        setattr(module, name, make(reduce))
    return module


def import_hydragnn_painn(src: Path | None = None) -> types.ModuleType:
    """HydraGNN's ``hydragnn.models.PAINNStack`` module, imported unchanged from its source tree."""
    if "hydragnn.models.PAINNStack" in sys.modules:
        return sys.modules["hydragnn.models.PAINNStack"]
    src = src or hydragnn_source()
    if src is None:
        raise ImportError("HydraGNN source not found: set HYDRAGNN_SRC or run benchmarks/setup_peers.sh with it")
    try:
        import torch_scatter  # noqa: F401
    except ImportError:
        sys.modules["torch_scatter"] = _torch_scatter_standin()
        SHIMS.append("torch_scatter stand-in (torch_geometric.utils.scatter)")
    # Parent packages without their __init__ (which import all of HydraGNN: training, data, every stack).
    for name in ("hydragnn", "hydragnn.models"):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(src / Path(*name.split(".")))]
            package.__file__ = None
            sys.modules[name] = package
    SHIMS.append("hydragnn and hydragnn.models as bare packages (their __init__ not run)")
    return importlib.import_module("hydragnn.models.PAINNStack")


def build_hydragnn(atoms_list: Sequence, dtype: torch.dtype = torch.float32, *, seed: int = 0,
                   lists: Sequence | None = None, hydragnn_x: str = "onehot", device: str = "cpu") -> Runner:
    """HydraGNN's PAINNStack with a per-atom energy head; ``hydragnn_x``: "onehot" (x = one-hot Z in
    128 features, input_dim=128) or "z" (x = Z, input_dim=1, as in HydraGNN's MLIP examples)."""
    from torch_geometric.data import Batch, Data

    module = import_hydragnn_painn()
    lists = neighbours(atoms_list) if lists is None else lists
    input_dim = HIDDEN if hydragnn_x == "onehot" else 1
    torch.manual_seed(seed)
    # The arguments hydragnn.models.create.create_model passes to PAINNStack (defaults where unset).
    model = module.PAINNStack(
        "inv_node_feat, equiv_node_feat, edge_index, diff, dist",
        "inv_node_feat, equiv_node_feat, edge_index, diff, dist",
        None,  # edge_dim
        N_RBF,  # num_radial
        CUTOFF,  # radius
        input_dim,
        HIDDEN,  # hidden_dim
        [1],  # output_dim
        0,  # pe_dim
        None,  # global_attn_engine
        None,  # global_attn_type
        0,  # global_attn_heads
        ["node"],  # output_type
        {"node": [{"type": "branch-0", "architecture": {"type": "mlp", "num_headlayers": 1, "dim_headlayers": [HEAD_HIDDEN]}}]},
        "silu",  # activation_function
        "mse",  # loss_function_type
        False,  # equivariance
        loss_weights=[1.0],
        freeze_conv=False,
        initial_bias=None,
        num_conv_layers=LAYERS,
        num_nodes=None,
        graph_pooling="add",
    ).to(dtype).to(device)

    graphs = []
    for atoms, (edge_index, shift) in zip(atoms_list, lists):
        z = torch.as_tensor(atoms.numbers, dtype=torch.long)
        x = nn.functional.one_hot(z, HIDDEN).to(dtype) if hydragnn_x == "onehot" else z.to(dtype)[:, None]
        e, f = label_arrays(atoms)
        graphs.append(Data(
            x=x,
            pos=torch.tensor(atoms.positions, dtype=dtype),
            # HydraGNN's RadiusGraphPBC layout: [i (centre), j (neighbour)], Cartesian shifts S @ cell.
            edge_index=torch.from_numpy(np.stack([edge_index[1], edge_index[0]])),
            edge_shifts=torch.tensor(shift.astype(np.float64) @ np.asarray(atoms.cell, dtype=np.float64), dtype=dtype),
            energy=torch.tensor([e], dtype=dtype),
            forces=torch.tensor(f, dtype=dtype),
        ))
    data = Batch.from_data_list(graphs)
    data.dataset_name = torch.zeros(len(graphs), 1, dtype=torch.long)
    data = data.to(device)
    data.pos.requires_grad_(True)
    n_graphs = len(graphs)

    def predict(training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        node_energy = model(data)[0][:, 0]
        energy = torch.zeros(n_graphs, dtype=node_energy.dtype, device=node_energy.device).index_add(0, data.batch, node_energy)
        (grad,) = torch.autograd.grad(energy.sum(), data.pos, create_graph=training, retain_graph=training)
        return energy, -grad

    name = "hydragnn" if hydragnn_x == "onehot" else "hydragnn_z1"
    return Runner(name, model, predict, data.pos, data.energy, data.forces,
                  info={"commit": hydragnn_commit(), "input_dim": input_dim, "x": hydragnn_x,
                        "radial_basis": "sinc (n pi d / rc) / d + cosine cutoff", "shims": list(dict.fromkeys(SHIMS))})


# ----------------------------------------------------------------------------------------------
# gfmkit
# ----------------------------------------------------------------------------------------------


def build_gfmkit(atoms_list: Sequence, dtype: torch.dtype = torch.float32, *, seed: int = 0,
                 lists: Sequence | None = None, device: str = "cpu") -> Runner:
    """gfmkit's MultiHeadPaiNN (one head); raises ImportError while gfmkit.models is not there."""
    from gfmkit.data.graphs import collate, structure_graph
    from gfmkit.models import HeadConfig, ModelConfig, MultiHeadPaiNN

    torch.manual_seed(seed)
    model = MultiHeadPaiNN(ModelConfig(hidden=HIDDEN, layers=LAYERS, n_rbf=N_RBF, cutoff=CUTOFF, head_hidden=HEAD_HIDDEN),
                           [HeadConfig(name="cuau")]).to(dtype).to(device)
    graphs = []
    for atoms in atoms_list:
        e, f = label_arrays(atoms)
        arrays = {"numbers": atoms.numbers, "positions": atoms.positions, "cell": np.asarray(atoms.cell),
                  "pbc": atoms.pbc, "energy": e, "forces": f}
        graphs.append(structure_graph(arrays, head=0, cutoff=CUTOFF, dtype=dtype))
    batch = collate(graphs)
    if lists is not None:  # structure_graph builds its own list with the same function: check it is the same
        shared = torch.cat([torch.from_numpy(ei) + int(start) for (ei, _), start in
                            zip(lists, np.cumsum([0] + [len(a) for a in atoms_list[:-1]]))], dim=1)
        if not torch.equal(shared, batch.edge_index):
            raise RuntimeError("gfmkit's graphs do not have the shared neighbour list")
    batch = batch.to(device)

    def predict(training: bool) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(batch, forces=True, stress=False, training=training)
        return out["energy"], out["forces"]

    return Runner("gfmkit", model, predict, batch.pos, batch.energy, batch.forces,
                  info={"version": _version("gfmkit")})


BUILDERS: dict[str, Callable[..., Runner]] = {
    "schnetpack": build_schnetpack,
    "hydragnn": build_hydragnn,
    "hydragnn_z1": lambda *a, **k: build_hydragnn(*a, hydragnn_x="z", **k),
    "gfmkit": build_gfmkit,
}


def _version(name: str) -> str:
    import importlib.metadata as m

    try:
        return m.version(name)
    except m.PackageNotFoundError:
        return "not installed"


# ----------------------------------------------------------------------------------------------
# Wiring checks
# ----------------------------------------------------------------------------------------------


def check_model(name: str, *, seed: int = 1, n_coords: int = 6, step: float = 1e-4) -> dict[str, Any]:
    """In float64 on one rattled 32-atom cell: finite energy and forces; forces against central finite
    differences of the energy (same neighbour list, positions moved by ±``step`` Å); the 2x1x1 supercell's
    energy against twice the cell's (a wrong periodic image would break it) and its forces against the
    cell's, tiled. Also whether a training step runs and gives a finite loss."""
    build = BUILDERS[name]
    (atoms,) = cuau_cells(1, seed=seed)
    runner = build([atoms], torch.float64, seed=0)
    energy, forces = runner.infer()
    rng = np.random.default_rng(seed)
    picks = [(int(a), int(c)) for a, c in zip(rng.integers(0, len(atoms), n_coords), rng.integers(0, 3, n_coords))]
    fd = []
    for a, c in picks:
        values = []
        for sign in (+1, -1):
            with torch.no_grad():
                runner.positions[a, c] += sign * step
            values.append(float(runner.infer()[0].sum()))
            with torch.no_grad():
                runner.positions[a, c] -= sign * step
        fd.append(-(values[0] - values[1]) / (2 * step))
    autograd = [float(forces[a, c]) for a, c in picks]
    fd_err = max(abs(x - y) for x, y in zip(fd, autograd))
    force_scale = float(forces.abs().max())

    super_atoms = atoms.repeat((2, 1, 1))
    super_runner = build([super_atoms], torch.float64, seed=0)
    super_energy, super_forces = super_runner.infer()
    tiled = torch.cat([forces, forces])
    loss = runner.train_step()
    result = {
        "energy": float(energy.sum()),
        "finite": bool(torch.isfinite(energy).all() and torch.isfinite(forces).all()),
        "force_max_abs": force_scale,
        "fd_max_abs_error": fd_err,
        "fd_relative_error": fd_err / max(force_scale, 1e-12),
        "supercell_energy_per_cell": float(super_energy.sum()) / 2,
        "supercell_energy_rel_error": abs(float(super_energy.sum()) / 2 - float(energy.sum())) / max(abs(float(energy.sum())), 1e-12),
        "supercell_forces_max_abs_error": float((super_forces - tiled).abs().max()),
        "edges_cell": int(neighbours([atoms])[0][0].shape[1]),
        "train_loss_finite": bool(np.isfinite(loss)),
    }
    result["ok"] = bool(result["finite"] and result["train_loss_finite"] and result["fd_relative_error"] < 1e-5
                        and result["supercell_energy_rel_error"] < 1e-9 and result["supercell_forces_max_abs_error"] < 1e-9 * max(force_scale, 1.0))
    return result


def main() -> None:
    import json

    torch.set_num_threads(2)
    report = {}
    for name in BUILDERS:
        try:
            report[name] = check_model(name)
        except ImportError as error:
            report[name] = {"available": False, "reason": str(error)}
    report["shims"] = list(dict.fromkeys(SHIMS)) + ["torch.utils.data.dataloader.T_co (for schnetpack)"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
