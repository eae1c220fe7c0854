"""The trainer: config, launch detection, loss routing and global normalisation, learning, precision,
checkpoints, resume after SIGKILL, SIGTERM, early stopping, wall time."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import yaml
from conftest import TINY_MODEL, tiny_config

from gfmkit.config import ConfigError
from gfmkit.launch import first_host, master_host
from gfmkit.train import (
    TrainConfig,
    Trainer,
    TrainingError,
    detect_launch,
    load_train_config,
    train,
)
from gfmkit.train.config import ScheduleConfig
from gfmkit.train.distributed import backend_for, select_device
from gfmkit.train.signals import stop_deadline
from gfmkit.train.state import EMA, Schedule
from gfmkit.train.trainer import LAST

# -- config ------------------------------------------------------------------------------------------


def test_config_loads_yaml_and_rejects_unknown_keys(tmp_path, demo_dir):
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(tiny_config(demo_dir, sampler={"strategy": "uniform"}, loss={"kind": "huber"})))
    config = load_train_config(path)
    assert isinstance(config, TrainConfig) and config.model.hidden == 16 and config.loss.kind == "huber"
    assert config.sampler.strategy == "uniform" and config.precision == "fp64"

    for bad, key in [
        ({"learning_rate": 1e-3}, "learning_rate"),
        ({"optimizer": {"lr": 1e-3, "momentum": 0.9}}, "optimizer.momentum"),
        ({"loss": {"forcs": 1.0}}, "loss.forcs"),
        ({"model": {"hiden": 8}}, "model.hiden"),
    ]:
        data = {**tiny_config(demo_dir), **bad}
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as info:
            load_train_config(path)
        assert str(path) in str(info.value)
    with pytest.raises(ConfigError, match="precision"):
        load_train_config({**tiny_config(demo_dir), "precision": "fp16"})
    with pytest.raises(ConfigError, match="loss.kind"):
        load_train_config(tiny_config(demo_dir, loss={"kind": "l4"}))
    with pytest.raises(ConfigError, match="max_steps or max_epochs"):
        load_train_config({**tiny_config(demo_dir), "max_steps": None})
    with pytest.raises(ConfigError, match="data"):
        load_train_config({"max_steps": 3})
    for bad, key in [({"optimizer": {"betas": [0.9, 1.0]}}, "optimizer.betas"), ({"loss": {"huber_delta": 0.0}}, "huber_delta"),
                     ({"schedule": {"min_lr_ratio": 2.0}}, "min_lr_ratio"), ({"stop_margin": -1.0}, "stop_margin")]:
        with pytest.raises(ConfigError, match=key):
            load_train_config(tiny_config(demo_dir, **bad))


# -- launch detection ---------------------------------------------------------------------------------


SLURM_JOB = {"SLURM_JOB_ID": "7", "SLURM_JOBID": "7", "SLURM_JOB_NODELIST": "nid[001-004,007]", "SLURM_NTASKS": "8"}
SLURM_STEP = {**SLURM_JOB, "SLURM_STEP_ID": "0", "SLURM_STEPID": "0", "SLURM_STEP_NODELIST": "nid[003-004]",
              "SLURM_STEP_NUM_TASKS": "4", "SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ("single", 0, 1, 0, None)),
        # torchrun (also under Slurm: its variables win)
        ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"},
         ("torchrun", 2, 4, 0, None)),
        # MPICH / Hydra (also Intel MPI)
        ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}, ("mpich", 3, 4, 1, None)),
        # Open MPI's mpirun inside a Slurm batch script: the batch shell's SLURM_PROCID=0 must not count
        ({**SLURM_JOB, "SLURM_PROCID": "0", "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8",
          "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, ("openmpi", 5, 8, 1, "slurm")),
        # Cray PALS (Aurora/Polaris mpiexec under PBS), which also sets PMI_*
        ({"PBS_JOBID": "42.pbs", "PALS_RANKID": "13", "PALS_LOCAL_RANKID": "1", "PMI_SIZE": "24", "PMI_RANK": "13"},
         ("pals", 13, 24, 1, "pbs")),
        ({"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_LOCAL_RANK": "1"}, ("mvapich", 1, 2, 1, None)),
        # srun task: the step's task count, not the job's
        (SLURM_STEP, ("slurm", 3, 4, 1, "slurm")),
        ({**SLURM_STEP, "SLURM_STEP_NUM_TASKS": "", "SLURM_STEP_ID": "", "SLURM_NTASKS": "8"}, ("slurm", 3, 8, 1, "slurm")),
        # srun --mpi=cray_shasta (Frontier, Perlmutter): Cray PMI variables, Slurm's local ID
        ({**SLURM_STEP, "PMI_RANK": "3", "PMI_SIZE": "4"}, ("mpich", 3, 4, 1, "slurm")),
        # srun --mpi=pmix
        ({**SLURM_STEP, "PMIX_RANK": "2"}, ("pmix", 2, 4, 1, "slurm")),
        # the batch script itself, or a notebook in an allocation: one process despite SLURM_NTASKS=8
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, ("single", 0, 1, 0, "slurm")),
        # reserved steps: batch (old and new IDs), extern, interactive
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_STEP_ID": "4294967294"}, ("single", 0, 1, 0, "slurm")),
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_STEP_ID": "4294967291"}, ("single", 0, 1, 0, "slurm")),
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_STEPID": "4294967292"}, ("single", 0, 1, 0, "slurm")),
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_STEP_ID": "4294967290"}, ("single", 0, 1, 0, "slurm")),
        ({**SLURM_JOB, "SLURM_PROCID": "0", "SLURM_STEP_ID": "batch"}, ("single", 0, 1, 0, "slurm")),
        # a PBS job without an MPI launcher is one process
        ({"PBS_JOBID": "42.pbs", "PBS_ENVIRONMENT": "PBS_BATCH"}, ("single", 0, 1, 0, "pbs")),
    ],
)
def test_detect_launch_from_environment(env, expected):
    launch = detect_launch(env, modules={})
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank, launch.scheduler) == expected


class FakeComm:
    def __init__(self, rank: int, size: int, node: FakeComm | None = None):
        self.rank, self.size, self.node = rank, size, node

    def Get_rank(self):
        return self.rank

    def Get_size(self):
        return self.size

    def Split_type(self, kind):
        assert kind == "shared"
        return self.node

    def Free(self):
        pass


def test_launch_master_address_and_mpi4py_engines(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x1001c0s0b0n0\nx1001c0s0b0n0\nx1001c0s0b0n1\n")
    pbs = detect_launch({"PBS_JOBID": "42.pbs", "PBS_NODEFILE": str(nodefile), "PALS_RANKID": "0", "PMI_SIZE": "2"}, modules={})
    assert (pbs.scheduler, pbs.scheduler_host, pbs.master_addr, pbs.world_size) == ("pbs", "x1001c0s0b0n0", None, 2)
    assert detect_launch({"PBS_JOBID": "1", "PBS_NODEFILE": str(tmp_path / "gone")}, modules={}).scheduler_host is None
    slurm = detect_launch(SLURM_STEP, modules={})
    assert (slurm.scheduler_host, slurm.master_addr) == ("nid003", None)  # the step's first node, not the job's
    assert detect_launch({**SLURM_STEP, "SLURM_STEP_NODELIST": ""}, modules={}).scheduler_host == "nid001"
    torchrun = detect_launch({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"}, modules={})
    assert (torchrun.master_addr, torchrun.master_port) == ("node7", 1234)
    assert first_host("login1") == "login1" and first_host("gpu[10-12],cpu3") == "gpu10"
    # under MPI rank 0 announces its own host, whatever node the scheduler lists first
    mpi = detect_launch({**SLURM_JOB, "PMI_RANK": "0", "PMI_SIZE": "2"}, modules={})
    assert mpi.scheduler_host == "nid001" and master_host(mpi, ["nid004", "nid002"]) == "nid004"
    assert master_host(mpi, ["nid004", "nid004"]) == "127.0.0.1"
    assert master_host(detect_launch({"MASTER_ADDR": "hsn0", "PMI_RANK": "0", "PMI_SIZE": "2"}, modules={}),
                       ["a", "b"]) == "hsn0"

    class FakeMPI:  # rank 2 of 3, the first rank on the second node
        COMM_TYPE_SHARED = "shared"
        COMM_WORLD = FakeComm(2, 3, node=FakeComm(0, 1))

    engine = detect_launch({}, modules={"mpi4py.MPI": FakeMPI, "ipyparallel": object()})
    assert (engine.launcher, engine.rank, engine.world_size, engine.local_rank) == ("ipyparallel", 2, 3, 0)
    plain = detect_launch({}, modules={"mpi4py.MPI": FakeMPI})
    assert (plain.launcher, plain.rank, plain.world_size, plain.local_rank) == ("mpi4py", 2, 3, 0)

    class ImportedOnly(FakeMPI):  # DeepHyper imports mpi4py with mpi4py.rc.initialize = False
        @staticmethod
        def Is_initialized():
            return False

    assert detect_launch({}, modules={"mpi4py.MPI": ImportedOnly}).launcher == "single"
    with pytest.raises(RuntimeError, match="outside"):
        detect_launch({"PMI_RANK": "4", "PMI_SIZE": "4"}, modules={})


def test_backend_and_device_choice():
    assert backend_for("cpu", available=lambda name: True) == "gloo"
    assert backend_for("cuda", available=lambda name: True) == "nccl"
    assert backend_for("xpu", available=lambda name: name == "xccl") == "xccl"
    assert backend_for("xpu", available=lambda name: name == "ccl") == "ccl"
    with pytest.raises(RuntimeError, match="xccl, ccl"):
        backend_for("xpu", available=lambda name: False)
    assert select_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device("auto", 3) == torch.device("cpu")
        with pytest.raises(RuntimeError, match="no cuda device"):
            select_device("cuda", 0)


# -- loss: routing, masks, global normalisation ---------------------------------------------------------


def test_loss_of_rank_slices_adds_up_to_the_whole_batch(demo_stores):
    """The property that makes N ranks equal 1 rank: per-slice losses over *global* counts sum to the
    whole batch's loss, and so do their gradients (float64, mixed datasets and sizes)."""
    from gfmkit.data.graphs import GraphDataset, collate
    from gfmkit.models import ModelConfig, build_model
    from gfmkit.train.config import LossConfig
    from gfmkit.train.loss import HeadTable, combine, loss_parts

    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_MODEL, init="xavier"), demo_stores).double()  # heads not all 0
    data = GraphDataset(demo_stores, 4.0, split="train")
    picks = [k for h in range(len(model.heads)) for k in [i for i in range(len(data)) if data.head[i] == h][:2]]
    graphs = [data[k] for k in picks[::-1]]  # every head twice, mixed sizes
    assert len({int(g.dataset) for g in graphs}) == len(model.heads)
    loss_config = LossConfig(stress=1.0, kind="huber", huber_delta=0.05, datasets={"bulk": 2.0})
    heads = HeadTable.from_model(model, data.property_names, loss_config.datasets)

    def parts(subset):
        batch = collate(subset)
        out = model(batch, forces=True, stress=True, training=True)
        return loss_parts(out, batch, heads, loss_config)

    whole_sums, whole_counts = parts(graphs)
    whole = combine(whole_sums, whole_counts, heads, loss_config)
    grads_whole = torch.autograd.grad(whole, list(model.parameters()), allow_unused=True)
    slices = [graphs[:3], graphs[3:10], graphs[10:]]
    results = [parts(s) for s in slices]
    global_counts = sum(c for _, c in results)
    assert torch.equal(global_counts, whole_counts)
    assert whole_counts[:, 2].sum() > 0 and whole_counts[:, 3].sum() > 0  # stress and property terms present
    losses = [combine(s, global_counts, heads, loss_config) for s, _ in results]
    assert float(sum(losses).detach()) == pytest.approx(float(whole.detach()), rel=1e-12)
    grads = [torch.autograd.grad(loss, list(model.parameters()), allow_unused=True) for loss in losses]
    for k, g in enumerate(grads_whole):
        if g is None:
            continue
        summed = sum(gs[k] if gs[k] is not None else torch.zeros_like(g) for gs in grads)
        assert torch.allclose(summed, g, rtol=1e-10, atol=1e-14)


def test_a_structure_trains_only_its_own_head(demo_stores):
    from gfmkit.data.graphs import GraphDataset, collate
    from gfmkit.models import ModelConfig, build_model
    from gfmkit.train.config import LossConfig
    from gfmkit.train.loss import HeadTable, combine, loss_parts

    torch.manual_seed(1)
    model = build_model(ModelConfig(**TINY_MODEL, init="xavier"), demo_stores).double()  # heads not all 0
    data = GraphDataset(demo_stores, 4.0, split="train")
    bulk = model.head_index("bulk")
    batch = collate([data[k] for k in range(len(data)) if data.head[k] == bulk][:3])
    heads = HeadTable.from_model(model, data.property_names)
    sums, counts = loss_parts(model(batch, forces=True, training=True), batch, heads, LossConfig())
    assert counts[bulk, :2].tolist() == [3, 3 * int(batch.natoms.sum())] and counts.sum() == counts[bulk].sum()
    combine(sums, counts, heads, LossConfig()).backward()
    w2 = model.readout.w2.grad
    assert w2[bulk].abs().sum() > 0
    assert torch.count_nonzero(torch.cat([w2[:bulk], w2[bulk + 1 :]])) == 0


def synthetic_batch():
    """Four structures of 2, 1, 3 and 2 atoms: head 0 (energy) x3, head 1 (property) x1.

    s0 (head 0, periodic): energy, forces, stress; s1 (head 0, molecule): energy only, garbage forces
    and stress that the masks must hide; s2 (head 0, periodic): forces and stress, no energy;
    s3 (head 1): the property, and an energy label that an energy term must ignore."""
    from types import SimpleNamespace

    g = torch.Generator().manual_seed(3)
    natoms = torch.tensor([2, 1, 3, 2])
    n = int(natoms.sum())
    cell = torch.zeros(4, 3, 3, dtype=torch.float64)
    cell[0] = torch.diag(torch.tensor([2.0, 3.0, 4.0], dtype=torch.float64))
    cell[2] = torch.diag(torch.tensor([1.0, 2.0, 5.0], dtype=torch.float64))
    batch = SimpleNamespace(
        z=torch.ones(n, dtype=torch.long), batch=torch.repeat_interleave(torch.arange(4), natoms), natoms=natoms,
        dataset=torch.tensor([0, 0, 0, 1]), cell=cell,
        pbc=torch.tensor([[True] * 3, [False] * 3, [True] * 3, [False] * 3]),
        energy=torch.randn(4, generator=g, dtype=torch.float64), energy_mask=torch.tensor([True, True, False, True]),
        forces=torch.randn(n, 3, generator=g, dtype=torch.float64), forces_mask=torch.tensor([True, False, True, False]),
        stress=torch.randn(4, 3, 3, generator=g, dtype=torch.float64), stress_mask=torch.tensor([True, True, True, False]),
        properties=torch.randn(4, 1, generator=g, dtype=torch.float64), properties_mask=torch.tensor([[False]] * 3 + [[True]]),
    )
    out = {"energy": torch.randn(4, generator=g, dtype=torch.float64), "forces": torch.randn(n, 3, generator=g, dtype=torch.float64),
           "stress": torch.randn(4, 3, 3, generator=g, dtype=torch.float64)}
    return batch, out


@pytest.mark.parametrize("kind", ["mse", "mae", "huber"])
def test_loss_terms_are_masked_scaled_and_weighted(kind):
    from gfmkit.train.config import LossConfig
    from gfmkit.train.loss import HeadTable, combine, elementwise, loss_parts

    batch, out = synthetic_batch()
    heads = HeadTable(is_energy=torch.tensor([True, False]), scale=torch.tensor([2.0, 0.5], dtype=torch.float64),
                      property_column=torch.tensor([-1, 0]), weight=torch.tensor([1.0, 3.0], dtype=torch.float64))
    config = LossConfig(kind=kind, huber_delta=0.3, energy=1.0, forces=10.0, stress=2.0, property=0.5)
    sums, counts = loss_parts(out, batch, heads, config)

    def f(residual):
        return float(elementwise(kind, torch.as_tensor(residual), 0.3).sum())

    s = 2.0  # head 0's scale
    energy = f([(out["energy"][k] - batch.energy[k]) / batch.natoms[k] / s for k in (0, 1)])
    atoms = torch.cat([torch.arange(0, 2), torch.arange(3, 6)])  # s0 and s2
    forces = f((out["forces"][atoms] - batch.forces[atoms]) / s)
    volume = torch.tensor([24.0, 10.0], dtype=torch.float64)
    stress = f(torch.stack([(out["stress"][k] - batch.stress[k]) * volume[i] / batch.natoms[k] / s for i, k in enumerate((0, 2))]))
    prop = f([(out["energy"][3] - batch.properties[3, 0]) / 0.5])
    expected_sums = torch.tensor([[energy, forces, stress, 0.0], [0.0, 0.0, 0.0, prop]], dtype=torch.float64)
    assert counts.tolist() == [[2, 15, 18, 0], [0, 0, 0, 1]]
    assert torch.allclose(sums, expected_sums, rtol=1e-12, atol=0)
    total = combine(sums, counts, heads, config)
    assert float(total) == pytest.approx(energy / 2 + 10 * forces / 15 + 2 * stress / 18 + 0.5 * 3.0 * prop / 1, rel=1e-12)
    # physical units: no scale, stress in eV/A^3
    raw, _ = loss_parts(out, batch, heads, LossConfig(kind="mae", normalise=False), physical=True)
    stress_mae = float(torch.stack([(out["stress"][k] - batch.stress[k]).abs() for k in (0, 2)]).sum())
    assert float(raw[0, 2]) == pytest.approx(stress_mae, rel=1e-12)


def test_schedule_and_ema():
    cosine = Schedule(ScheduleConfig(kind="cosine", warmup_steps=4, min_lr_ratio=0.1), 1.0, total_steps=14)
    lrs = [cosine.lr(s) for s in range(16)]
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4] == pytest.approx(1.0) and lrs[14] == pytest.approx(0.1) and lrs[15] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    plateau = Schedule(ScheduleConfig(kind="plateau", patience=2, factor=0.5), 1.0, total_steps=100)
    reduced = [plateau.on_validation(v) for v in (1.0, 0.5, 0.6, 0.7, 0.4, 0.45, 0.5)]
    assert reduced == [False, False, False, True, False, False, True]
    assert plateau.lr(50) == pytest.approx(0.25)
    again = Schedule(ScheduleConfig(kind="plateau"), 1.0, 100)
    again.load_state_dict(plateau.state_dict())
    assert again.lr(50) == plateau.lr(50)

    warm = Schedule(ScheduleConfig(kind="plateau", warmup_steps=2, patience=1), 1.0, total_steps=100)
    assert [warm.lr(s) for s in range(3)] == [0.5, 1.0, 1.0]
    warm.on_validation(1.0)
    assert warm.on_validation(2.0) and warm.lr(0) == 0.25 and warm.lr(5) == 0.5  # warm-up, then the plateau factor

    layer = torch.nn.Linear(2, 2).double()
    ema = EMA(dict(layer.named_parameters()), decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(dict(layer.named_parameters()))  # warm-up decay min(0.9, 2/11)
    expected = start + (1 - 2 / 11)
    assert torch.allclose(ema.shadow["weight"], expected)
    with ema.applied(layer):
        assert torch.allclose(layer.weight, expected)
    assert torch.allclose(layer.weight, start + 1.0)


# -- training runs --------------------------------------------------------------------------------------


def zero_force_mae(stores, split="val") -> float:
    from gfmkit.data.graphs import GraphDataset

    data = GraphDataset(stores, 4.0, split=split)
    forces = [data[k].forces.abs().flatten() for k in range(len(data)) if bool(data[k].forces_mask)]
    return float(torch.cat(forces).mean())


def test_loss_goes_down_and_forces_beat_a_zero_predictor(demo_dir, demo_stores, tmp_path, one_thread):
    # the datasets with forces and one property dataset (more property-only datasets thin the force batches)
    stores = [p for p in sorted(demo_dir.glob("*.bp")) if p.stem not in ("vacancy_energy", "surface_energy", "adsorption_energy")]
    config = tiny_config(stores, model={"hidden": 32, "layers": 2, "n_rbf": 10, "cutoff": 4.5, "head_hidden": 16},
                         sampler={"batch_size": 8}, optimizer={"lr": 5e-3}, precision="fp32", max_steps=240,
                         validate_every=60, checkpoint_every=120, log_every=20)
    run, metrics = train(config, tmp_path / "run")
    train_rows = metrics[metrics["phase"] == "train"]
    val = metrics[metrics["phase"] == "val"]
    first, last = train_rows["loss_interval"].iloc[0], train_rows["loss_interval"].iloc[-1]
    assert last < 0.4 * first, (first, last)
    assert val["loss"].iloc[-1] < val["loss"].iloc[0]
    baseline = zero_force_mae(demo_stores)
    assert val["forces_mae"].iloc[-1] < 0.5 * baseline, (val["forces_mae"].tolist(), baseline)
    # per-dataset columns, checkpoints, run files
    assert "train/bulk/loss" in metrics and "val/molecules/forces_mae" in metrics and "val/bulk/stress_mae" in metrics
    assert "val/bulk_modulus/property_mae" in metrics
    assert (run.checkpoints / "last.pt").exists() and (run.checkpoints / "best.pt").exists()
    info = json.loads((run.path / "run.json").read_text())
    assert info["precision"] == "fp32" and info["world_size"] == 1 and info["backend"] is None
    assert load_train_config(run.config_path) == load_train_config(config)


def test_fp64_run_has_float64_parameters_and_a_weights_only_checkpoint(demo_dir, tmp_path, one_thread):
    from gfmkit import load_model

    trainer = Trainer(tiny_config(demo_dir, max_steps=3), tmp_path / "run")
    metrics = trainer.fit()
    assert all(p.dtype == torch.float64 for p in trainer.model.parameters())
    data = torch.load(tmp_path / "run" / "checkpoints" / LAST, weights_only=True)
    assert data["precision"] == "fp64" and data["dtype"] == "float64" and data["training"]["step"] == 3
    assert set(data["training"]) >= {"model", "optimizer", "schedule", "ema", "sampler", "rng", "step"}
    model = load_model(tmp_path / "run" / "checkpoints" / LAST)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    # the checkpoint's weights are the EMA weights, the raw ones travel in the training state
    assert torch.equal(model.readout.w1, trainer.ema.shadow["readout.w1"])
    assert not torch.equal(model.readout.w1, data["training"]["model"]["readout.w1"])
    start = metrics[metrics["event"] == "start"].iloc[0]
    assert (start["precision"], start["param_dtype"], start["sensitive_dtype"]) == ("fp64", "float64", "float64")
    # validation runs on the EMA weights: re-evaluating reproduces the last validation loss, the raw weights do not
    last_val = metrics[metrics["phase"] == "val"].iloc[-1]
    assert last_val["step"] == 3 and validation_loss(trainer) == pytest.approx(last_val["loss"], rel=1e-12)
    trainer.ema = None
    assert validation_loss(trainer) != pytest.approx(last_val["loss"], rel=1e-6)


def validation_loss(trainer) -> float:
    from gfmkit.train.loss import combine

    sums, counts, _, _ = trainer.evaluate_split()
    return float(combine(sums, counts, trainer.heads, trainer.config.loss))


def test_bf16_pure_steps_on_float32_master_weights_and_resumes_exactly(demo_dir, tmp_path, one_thread):
    """AdamW's first steps move a weight by about lr; at lr=1e-5 that is far below half of bfloat16's
    spacing for weights above 0.05 (1.2e-4), so bf16 weights alone would not move at all."""
    lr = 1e-5
    config = tiny_config(demo_dir, precision="bf16-pure", max_steps=3, validate_every=3, checkpoint_every=3,
                         optimizer={"lr": lr, "grad_clip": None}, schedule={"kind": "constant"})
    trainer = Trainer(config, tmp_path / "run")
    start = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.fit()
    saved = torch.load(tmp_path / "run" / "checkpoints" / LAST, weights_only=True)["training"]
    masters = saved.get("master") or saved["model"]  # what AdamW stepped on
    moved = held = total = 0
    largest = 0.0
    for k, name in enumerate(trainer.weights.names):
        before, master, model = start[name], masters[name], saved["model"][name]
        step = master.float() - before.float()
        largest = max(largest, float(step.abs().max()))
        large = (before.float().abs() > 0.05) & (saved["optimizer"]["state"][k]["exp_avg"] != 0)  # with a gradient
        total += int(large.sum())
        moved += int((step[large] != 0).sum())
        held += int((model[large] == before[large]).sum())
    assert total > 100 and moved > 0.9 * total, (moved, total)  # the masters took the small steps ...
    assert held > 0.9 * total, (held, total)  # ... that bfloat16 weights could not hold
    assert largest <= 3.01 * lr  # three AdamW steps of at most ~lr each
    for name, master in masters.items():
        assert master.dtype == torch.float32 and torch.equal(saved["model"][name], master.bfloat16())
        assert trainer.ema.shadow[name].dtype == torch.float32  # the EMA averages the masters
    assert json.loads((tmp_path / "run" / "run.json").read_text())["optimizer_dtype"] == "float32"

    # exact resume: 2 steps, then resumed to 3, equals the uninterrupted 3 (masters, EMA, AdamW moments)
    Trainer({**config, "max_steps": 2}, tmp_path / "split").fit()
    Trainer(config, tmp_path / "split", resume="auto").fit()
    resumed = torch.load(tmp_path / "split" / "checkpoints" / LAST, weights_only=True)["training"]
    for name, value in saved["master"].items():
        assert torch.equal(value, resumed["master"][name]), name
        assert torch.equal(saved["ema"]["shadow"][name], resumed["ema"]["shadow"][name]), name
    for key, state in saved["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg"], resumed["optimizer"]["state"][key]["exp_avg"])
    with pytest.raises(TrainingError, match="precision bf16-pure"):
        Trainer({**config, "precision": "fp32"}, tmp_path / "split", resume="auto")


@pytest.mark.parametrize("precision", ["bf16-autocast", "bf16-pure"])
def test_bf16_linear_layers_really_compute_in_bf16(demo_dir, tmp_path, one_thread, precision):
    seen: list[torch.dtype] = []

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            seen.append(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        trainer = Trainer(tiny_config(demo_dir, precision=precision, max_steps=2, validate_every=2), tmp_path / "run")
        metrics = trainer.fit()
    finally:
        handle.remove()
    assert seen and set(seen) == {torch.bfloat16}, set(seen)  # a silent float32 fallback fails here
    params = {p.dtype for p in trainer.model.parameters()}
    assert params == ({torch.float32} if precision == "bf16-autocast" else {torch.bfloat16})
    assert trainer.model.readout.reference.dtype == torch.float64  # fitted statistics stay float64
    assert trainer.train_set.dtype == torch.float32  # positions and forces stay >= fp32
    val = metrics[metrics["phase"] == "val"]
    assert torch.isfinite(torch.tensor(val["loss"].to_numpy())).all()
    assert json.loads((tmp_path / "run" / "run.json").read_text())["precision"] == precision


def test_unsupported_precision_is_an_error_not_a_fallback(demo_dir, tmp_path, monkeypatch):
    import gfmkit.train.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "cpu_autocast_bf16", lambda: False)
    with pytest.raises(RuntimeError, match="bf16-autocast"):
        Trainer(tiny_config(demo_dir, precision="bf16-autocast"), tmp_path / "run")


def test_occupied_run_dir_resume_rules_and_early_stopping(demo_dir, tmp_path, one_thread):
    config = tiny_config(demo_dir, optimizer={"lr": 1e-12, "ema_decay": None}, max_steps=20, validate_every=1,
                         early_stopping_patience=2, schedule={"kind": "constant"})
    run, metrics = train(config, tmp_path / "run")
    stop = metrics[metrics["event"] == "stop"].iloc[-1]
    assert stop["reason"] == "early_stopping" and stop["step"] == 3
    with pytest.raises(TrainingError, match="already holds a run"):
        Trainer(config, tmp_path / "run")
    with pytest.raises(TrainingError, match="weights only"):
        Trainer(config, tmp_path / "other", resume=run.checkpoints / "best.pt")
    # resume="auto" on an empty directory starts a new run
    fresh = Trainer(tiny_config(demo_dir, max_steps=1), tmp_path / "new", resume="auto")
    assert fresh.step == 0


def test_epochs_sampler_weights_and_graph_cache(demo_dir, tmp_path, one_thread):
    config = tiny_config(demo_dir, max_steps=None, max_epochs=2, data={"cache_graphs": True},
                         sampler={"strategy": "weights", "weights": {"bulk": 1.0}, "samples_per_epoch": 12})
    trainer = Trainer(config, tmp_path / "run")
    metrics = trainer.fit()
    assert (trainer.step, trainer.epoch, trainer.batch_in_epoch) == (4, 2, 0)
    assert len(trainer.loader.dataset.cache) > 0
    train_rows = metrics[metrics["phase"] == "train"]
    per_dataset = {c.split("/")[1] for c in train_rows.columns if c.startswith("train/") and c.endswith("/loss")}
    assert per_dataset == {"bulk"}  # only the weighted dataset is drawn
    with pytest.raises(TrainingError, match="sampler.weights names unknown dataset"):
        Trainer(tiny_config(demo_dir, sampler={"strategy": "weights", "weights": {"bulkk": 1.0}}), tmp_path / "bad")
    with pytest.raises(TrainingError, match=r"loss.datasets names unknown dataset\(s\) \['bulkk'\]"):
        Trainer(tiny_config(demo_dir, loss={"datasets": {"bulkk": 2.0}}), tmp_path / "bad")


def test_stop_deadline_from_wall_time_and_slurm_end_time():
    assert stop_deadline(None, 100.0, {}) is None
    assert stop_deadline(50.0, 100.0, {}) == 150.0
    assert stop_deadline(None, 100.0, {"SLURM_JOB_END_TIME": "1000"}) == 1000.0
    assert stop_deadline(5000.0, 100.0, {"SLURM_JOB_END_TIME": "1000"}) == 1000.0  # the earlier one wins
    assert stop_deadline(50.0, 100.0, {"SLURM_JOB_END_TIME": "1000"}) == 150.0
    assert stop_deadline(None, 100.0, {"SLURM_JOB_END_TIME": "0"}) is None  # no limit
    assert stop_deadline(None, 100.0, {"SLURM_JOB_END_TIME": "soon"}) is None


@pytest.mark.parametrize("limit", ["wall_time", "slurm_end_time"])
def test_deadline_margin_stops_with_a_checkpoint_and_resumes(demo_dir, tmp_path, one_thread, monkeypatch, limit):
    if limit == "wall_time":
        config = tiny_config(demo_dir, max_steps=4, wall_time=1e-3, stop_margin=0.0)
    else:  # the job ends in an hour, and the margin is an hour: stop at the first step boundary
        monkeypatch.setenv("SLURM_JOB_END_TIME", str(int(time.time()) + 3600))
        config = tiny_config(demo_dir, max_steps=4, stop_margin=3600.0)
    run, metrics = train(config, tmp_path / "run")
    stop = metrics[metrics["event"] == "stop"].iloc[-1]
    assert stop["reason"] == "wall_time" and stop["step"] == 1
    assert torch.load(run.checkpoints / LAST, weights_only=True)["training"]["step"] == 1
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    resumed = Trainer({**config, "wall_time": None, "stop_margin": 0.0}, tmp_path / "run", resume="auto")
    resumed.fit()
    assert (resumed.step, resumed.stop_reason) == (4, None)


# -- kill and resume ------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


KILLER = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
from gfmkit.train import Trainer

config, run, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])

def callback(record):
    if record.get("phase") == "train" and record["step"] == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

Trainer(config, run, callback=callback).fit()
"""


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_sigkill_equals_an_uninterrupted_run(demo_dir, tmp_path, one_thread, workers):
    # 7 steps over epochs of 4 batches (the run ends inside epoch 1), EMA, warm-up + cosine, validation at
    # 4 and 7, checkpoints at 3 and 6; killed at 5, resumed from 3. With a worker the loader prefetches
    # past the step being trained (and past the epoch's end).
    config = tiny_config(demo_dir, max_steps=7, checkpoint_every=3, validate_every=4, data={"num_workers": workers},
                         sampler={"batch_size": 5, "samples_per_epoch": 18}, schedule={"warmup_steps": 2})
    reference = Trainer(config, tmp_path / "reference")
    reference.fit()
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    with open(tmp_path / "killer.log", "w") as log:  # not a pipe: an orphaned worker would hold it open
        proc = subprocess.run([sys.executable, str(script), json.dumps(config), str(tmp_path / "killed"), "5"],
                              stdout=log, stderr=subprocess.STDOUT, timeout=120, env=child_env(), check=False)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "killer.log").read_text()[-2000:]
    saved = torch.load(tmp_path / "killed" / "checkpoints" / LAST, weights_only=True)
    assert saved["training"]["step"] == 3
    resumed = Trainer(config, tmp_path / "killed", resume="auto")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (3, 0, 3)
    resumed.fit()
    a = torch.load(tmp_path / "reference" / "checkpoints" / LAST, weights_only=True)["training"]
    b = torch.load(tmp_path / "killed" / "checkpoints" / LAST, weights_only=True)
    assert (b["state_dict"].keys() == a["model"].keys()) and b["training"]["world_size"] == 1
    assert [(t.step, t.epoch, t.batch_in_epoch) for t in (reference, resumed)] == [(7, 1, 3)] * 2
    assert_same_training_state(a, b["training"])
    ma, mb = reference.run.metrics(), resumed.run.metrics()
    for frame in (ma, mb):
        assert frame[frame["phase"] == "train"]["step"].tolist() == list(range(1, 8))  # killed steps 4-5 dropped
    va, vb = ma[ma["phase"] == "val"], mb[mb["phase"] == "val"]
    assert va["loss"].tolist() == vb["loss"].tolist() and len(va) == 2


def assert_same_training_state(a: dict, b: dict) -> None:
    """Two checkpoints' training states are bitwise equal: counters, weights, EMA, AdamW, RNG states."""
    assert [a[k] for k in ("step", "epoch", "batch_in_epoch")] == [b[k] for k in ("step", "epoch", "batch_in_epoch")]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for key, value in a["ema"]["shadow"].items():
        assert torch.equal(value, b["ema"]["shadow"][key]), key
    for key, state in a["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[moment], b["optimizer"]["state"][key][moment])
    assert a["schedule"] == b["schedule"]
    # the global RNG states too (no DataLoader iterator may draw from them)
    assert torch.equal(a["rng"][0]["torch"], b["rng"][0]["torch"])
    assert a["rng"][0]["python"] == b["rng"][0]["python"]


def test_sigterm_makes_a_checkpoint_and_a_clean_exit(demo_dir, tmp_path):
    """As schedulers do, SIGTERM goes to every process of the job: the DataLoader worker too."""
    config = tiny_config(demo_dir, max_steps=100000, checkpoint_every=100000, validate_every=100000, data={"num_workers": 1})
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gfmkit.cli.train", "train", str(path), "--out", str(run), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(), start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and sum('"phase": "train"' in line for line in metrics.read_text().splitlines()) >= 2:
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    stop = records[-1]
    assert stop["event"] == "stop" and stop["reason"] == "SIGTERM"
    saved = torch.load(run / "checkpoints" / LAST, weights_only=True)
    assert saved["training"]["step"] == stop["step"] >= 2
    assert "resume auto" in out
