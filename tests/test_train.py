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

from gfmkit.config import ConfigError
from gfmkit.train import (
    TrainConfig,
    Trainer,
    TrainingError,
    detect_launch,
    load_train_config,
    train,
)
from gfmkit.train.config import ScheduleConfig
from gfmkit.train.distributed import backend_for, first_host, select_device
from gfmkit.train.trainer import EMA, LAST, Schedule

TINY = {"hidden": 16, "layers": 1, "n_rbf": 8, "cutoff": 4.0, "head_hidden": 8}


def tiny_config(demo_dir, **top) -> dict:
    config = {
        "data": {"stores": [str(demo_dir)]},
        "model": dict(TINY),
        "sampler": {"batch_size": 6},
        "optimizer": {"lr": 3e-3},
        "max_steps": 4,
        "precision": "fp64",
        "device": "cpu",
        "validate_every": 2,
        "checkpoint_every": 2,
        "log_every": 1,
        "progress": False,
    }
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@pytest.fixture
def one_thread():
    """Training tests run on one thread: on a shared 2-core machine, 2 OpenMP threads with a busy
    core make small-op models 10-20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


# -- launch detection ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, ("single", 0, 1, 0)),
        ({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1"}, ("mpich", 3, 4, 1)),
        ({"OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}, ("openmpi", 5, 8, 1)),
        ({"PALS_RANKID": "13", "PALS_LOCAL_RANKID": "1", "PMI_SIZE": "24", "PMI_RANK": "13"}, ("pals", 13, 24, 1)),
        ({"SLURM_PROCID": "6", "SLURM_NTASKS": "8", "SLURM_LOCALID": "2", "SLURM_STEP_ID": "0", "SLURM_JOB_ID": "1"},
         ("slurm", 6, 8, 2)),
        ({"SLURM_PROCID": "0", "SLURM_NTASKS": "8", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "1"}, ("single", 0, 1, 0)),
        ({"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"},
         ("torchrun", 2, 4, 0)),
        ({"MV2_COMM_WORLD_RANK": "1", "MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_LOCAL_RANK": "1"}, ("mvapich", 1, 2, 1)),
    ],
)
def test_detect_launch_from_environment(env, expected):
    launch = detect_launch(env, modules={})
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == expected


def test_launch_scheduler_master_address_and_ipyparallel(tmp_path):
    nodefile = tmp_path / "nodes"
    nodefile.write_text("x1001c0s0b0n0\nx1001c0s0b0n1\n")
    pbs = detect_launch({"PBS_JOBID": "42.pbs", "PBS_NODEFILE": str(nodefile), "PALS_RANKID": "0", "PMI_SIZE": "2"}, modules={})
    assert (pbs.scheduler, pbs.master_addr, pbs.world_size) == ("pbs", "x1001c0s0b0n0", 2)
    slurm = detect_launch({"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_NTASKS": "2",
                           "SLURM_JOB_NODELIST": "nid[001-004,007]"}, modules={})
    assert (slurm.scheduler, slurm.master_addr, slurm.local_rank) == ("slurm", "nid001", 1)
    torchrun = detect_launch({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "node7", "MASTER_PORT": "1234"}, modules={})
    assert (torchrun.master_addr, torchrun.master_port) == ("node7", 1234)
    assert first_host("login1") == "login1" and first_host("gpu[10-12],cpu3") == "gpu10"

    class FakeComm:
        def Get_rank(self):
            return 2

        def Get_size(self):
            return 3

    class FakeMPI:
        COMM_WORLD = FakeComm()

    engine = detect_launch({}, modules={"mpi4py.MPI": FakeMPI, "ipyparallel": object()})
    assert (engine.launcher, engine.rank, engine.world_size) == ("ipyparallel", 2, 3)
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
    model = build_model(ModelConfig(**TINY), demo_stores).double()
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
    model = build_model(ModelConfig(**TINY), demo_stores).double()
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

    layer = torch.nn.Linear(2, 2).double()
    ema = EMA(layer, decay=0.9)
    start = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(1.0)
    ema.update(layer)  # warm-up decay min(0.9, 2/11)
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
    config = tiny_config(demo_dir, model={"hidden": 32, "layers": 2, "n_rbf": 10, "cutoff": 4.5, "head_hidden": 16},
                         sampler={"batch_size": 8}, optimizer={"lr": 5e-3}, precision="fp32", max_steps=160,
                         validate_every=40, checkpoint_every=80, log_every=20)
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

    monkeypatch.setattr(trainer_module, "_cpu_autocast_bf16", lambda: False)
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
    with pytest.raises(TrainingError, match="unknown dataset"):
        Trainer(tiny_config(demo_dir, sampler={"strategy": "weights", "weights": {"bulkk": 1.0}}), tmp_path / "bad")


def test_wall_time_margin_stops_with_a_checkpoint(demo_dir, tmp_path, one_thread):
    run, metrics = train(tiny_config(demo_dir, max_steps=50, wall_time=1e-3, stop_margin=0.0), tmp_path / "run")
    stop = metrics[metrics["event"] == "stop"].iloc[-1]
    assert stop["reason"] == "wall_time" and stop["step"] == 1
    assert torch.load(run.checkpoints / LAST, weights_only=True)["training"]["step"] == 1


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


def test_resume_after_sigkill_equals_an_uninterrupted_run(demo_dir, tmp_path, one_thread):
    # 8 steps over epochs of 4 batches, EMA, warm-up + cosine, validation at 4 and 8; checkpoint at 3 and 6
    config = tiny_config(demo_dir, max_steps=8, checkpoint_every=3, validate_every=4,
                         sampler={"batch_size": 5, "samples_per_epoch": 18}, schedule={"warmup_steps": 2})
    reference = Trainer(config, tmp_path / "reference")
    reference.fit()
    script = tmp_path / "killer.py"
    script.write_text(textwrap.dedent(KILLER))
    proc = subprocess.run([sys.executable, str(script), json.dumps(config), str(tmp_path / "killed"), "5"],
                          capture_output=True, text=True, timeout=120, env=child_env(), check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    saved = torch.load(tmp_path / "killed" / "checkpoints" / LAST, weights_only=True)
    assert saved["training"]["step"] == 3
    resumed = Trainer(config, tmp_path / "killed", resume="auto")
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (3, 0, 3)
    resumed.fit()
    a = torch.load(tmp_path / "reference" / "checkpoints" / LAST, weights_only=True)
    b = torch.load(tmp_path / "killed" / "checkpoints" / LAST, weights_only=True)
    assert a["training"]["step"] == b["training"]["step"] == 8 and a["training"]["epoch"] == b["training"]["epoch"] == 2
    for key, value in a["training"]["model"].items():
        assert torch.equal(value, b["training"]["model"][key]), key
    for key, value in a["state_dict"].items():  # EMA weights
        assert torch.equal(value, b["state_dict"][key]), key
    for key, state in a["training"]["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], b["training"]["optimizer"]["state"][key]["exp_avg_sq"])
    ma, mb = reference.run.metrics(), resumed.run.metrics()
    for frame in (ma, mb):
        assert frame[frame["phase"] == "train"]["step"].tolist() == list(range(1, 9))  # killed steps 4-5 dropped
    va, vb = ma[ma["phase"] == "val"], mb[mb["phase"] == "val"]
    assert va["loss"].tolist() == vb["loss"].tolist() and len(va) == 2


def test_sigterm_makes_a_checkpoint_and_a_clean_exit(demo_dir, tmp_path):
    config = tiny_config(demo_dir, max_steps=100000, checkpoint_every=100000, validate_every=100000)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "gfmkit.cli.train", "train", str(path), "--out", str(run), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env())
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
        proc.send_signal(signal.SIGTERM)
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
