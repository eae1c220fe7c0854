"""Training under `mpiexec -n 2`: the same steps as one rank, and a stop signal on one rank stops both."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config

TRAIN = """
import json
import torch
from gfmkit.train import Trainer
trainer = Trainer(json.loads({config!r}), {run!r})
trainer.fit()
emit({{"rank": trainer.dist.rank, "world": trainer.dist.world_size, "backend": trainer.dist.backend,
       "launcher": trainer.dist.launch.launcher}})
"""


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    scale = max(float(a.abs().max()), 1e-300)
    return float((a - b).abs().max()) / scale


@pytest.mark.mpi
def test_two_ranks_take_the_same_steps_as_one(run_mpi, demo_dir, demo_stores, tmp_path):
    import json

    from gfmkit.data.graphs import GraphDataset
    from gfmkit.data.sampling import DatasetMixer, GlobalBatchSampler

    # a clip below every step's gradient norm: clipping must act on the summed (global) gradient
    config = tiny_config(demo_dir, max_steps=4, checkpoint_every=4, validate_every=2, sampler={"batch_size": 7, "strategy": "uniform"},
                         optimizer={"lr": 5e-3, "weight_decay": 0.01, "grad_clip": 1.0})
    # the setting is what the test claims: mixed sizes, and a head on one rank's slice but not the other's
    data = GraphDataset(demo_stores, 4.0, split="train")
    mixer = DatasetMixer(data.head, strategy="uniform", seed=0)
    sampler = GlobalBatchSampler(mixer, data.natoms, batch_size=7, world_size=2)
    absent = 0
    for batch in sampler.global_batches()[:4]:
        heads = [set(data.head[sampler.rank_slice(batch, r)].tolist()) for r in (0, 1)]
        absent += bool(heads[0] ^ heads[1])
        assert len(set(data.natoms[batch].tolist())) > 1
    assert absent >= 3

    runs = {}
    for n in (2, 1):
        runs[n] = tmp_path / f"ranks{n}"
        result = run_mpi(TRAIN.format(config=json.dumps(config), run=str(runs[n])), n=n, timeout=180)
        ranks = [e[0] for e in result.emitted]
        assert [r["world"] for r in ranks] == [n] * n
        if n == 2:
            assert {r["backend"] for r in ranks} == {"gloo"} and ranks[0]["launcher"] == "mpich"
    two = torch.load(runs[2] / "checkpoints" / "last.pt", weights_only=True)
    one = torch.load(runs[1] / "checkpoints" / "last.pt", weights_only=True)
    assert two["training"]["step"] == one["training"]["step"] == 4
    for key, value in one["training"]["model"].items():
        if value.is_floating_point():
            assert value.dtype == torch.float64
            assert relative_difference(value, two["training"]["model"][key]) < 1e-10, key
    for key, value in one["state_dict"].items():
        if value.is_floating_point():
            assert relative_difference(value, two["state_dict"][key]) < 1e-10, key
    # four AdamW steps were taken
    assert all(int(s["step"]) == 4 for s in one["training"]["optimizer"]["state"].values())
    m1 = [json.loads(line) for line in (runs[1] / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (runs[2] / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in m1] == [r["phase"] for r in m2]
    for a, b in zip(m1, m2):
        if a["phase"] in ("train", "val"):
            assert a["step"] == b["step"]
            assert np.isclose(a["loss"], b["loss"], rtol=1e-10, atol=0)
            if a["phase"] == "val":
                assert np.isclose(a["forces_mae"], b["forces_mae"], rtol=1e-10, atol=0)
            else:
                assert a["structures"] == b["structures"]
                assert a["grad_norm"] > 1.0 and np.isclose(a["grad_norm"], b["grad_norm"], rtol=1e-10, atol=0)


STOP_ON_ONE_RANK = """
import json, os, signal, sys
sys.stderr = open(os.path.join({run!r} + f"-stderr{{_rank}}.txt"), "w")  # where tqdm draws its bars
from gfmkit.train import Trainer
trainer = Trainer(json.loads({config!r}), {run!r})
original = trainer._train_step

def step(batch, stop):
    if trainer.dist.rank == 1 and trainer.step == 2:
        os.kill(os.getpid(), signal.SIGUSR1)  # only rank 1 is told to stop
    return original(batch, stop)

trainer._train_step = step
trainer.fit()
emit({{"rank": trainer.dist.rank, "step": trainer.step, "reason": trainer.stop_reason}})
"""


@pytest.mark.mpi
def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(run_mpi, demo_dir, tmp_path):
    import json

    # bf16-pure on the way: bfloat16 parameters broadcast and float32 master gradients summed over gloo
    config = tiny_config(demo_dir, max_steps=1000, checkpoint_every=1000, validate_every=1000, progress=True,
                         precision="bf16-pure")
    run = tmp_path / "run"
    result = run_mpi(STOP_ON_ONE_RANK.format(config=json.dumps(config), run=str(run)), n=2, timeout=180)
    bars = [(tmp_path / f"run-stderr{r}.txt").read_text() for r in (0, 1)]
    assert "train: " in bars[0] and "train: " not in bars[1]  # progress on rank 0 only
    ranks = [e[0] for e in result.emitted]
    assert [r["step"] for r in ranks] == [3, 3]
    assert ranks[1]["reason"] == "SIGUSR1" and ranks[0]["reason"] == "signal on another rank"
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["training"]["step"] == 3 and saved["training"]["world_size"] == 2
    assert {m.dtype for m in saved["training"]["master"].values()} == {torch.float32}
