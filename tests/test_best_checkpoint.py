"""What checkpoints/best.pt holds: ``TrainConfig.best_checkpoint`` ("last" by default, or "val_loss"),
decided at each validation by the trainer (issue #15)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import tiny_config

from gfmkit.config import ConfigError
from gfmkit.train import Trainer, load_train_config
from gfmkit.train.trainer import BEST, LAST, best_checkpoint_steps

#: validation losses the tests impose, one per step: the lowest is at step 5 of 6
LOSSES = [5.0, 3.0, 4.0, 3.5, 2.0, 2.5]


def test_rules_on_a_sequence_of_validation_losses():
    assert best_checkpoint_steps(LOSSES, "val_loss") == [True, True, False, False, True, False]
    assert best_checkpoint_steps(LOSSES, "last") == [True] * 6
    # improvements below the relative threshold do not count; a non-finite loss is never kept
    assert best_checkpoint_steps([1.0, 0.9995, 0.5], "val_loss", threshold=1e-3) == [True, False, True]
    assert best_checkpoint_steps([math.nan, 2.0, math.inf], "last") == [False, True, False]
    assert best_checkpoint_steps([math.nan, 2.0, math.inf], "val_loss") == [False, True, False]


def test_default_is_last_and_unknown_rules_are_errors(demo_dir):
    assert load_train_config(tiny_config(demo_dir)).best_checkpoint == "last"
    with pytest.raises(ConfigError, match="best_checkpoint"):
        load_train_config(tiny_config(demo_dir, best_checkpoint="lowest"))


@pytest.mark.parametrize("rule", ["last", "val_loss"])
def test_trainer_writes_best_by_its_rule(demo_dir, tmp_path, monkeypatch, rule):
    torch.set_num_threads(1)
    imposed = iter(LOSSES)
    real = Trainer.evaluate_split

    def evaluate_split(self):
        # the real validation, with the loss replaced: one energy element whose weighted mean is the next loss
        sums, counts, errors, error_counts = real(self)
        sums, counts = torch.zeros_like(sums), torch.zeros_like(counts)
        sums[0, 0], counts[0, 0] = next(imposed) / self.config.loss.energy, 1.0
        return sums, counts, errors, error_counts

    monkeypatch.setattr(Trainer, "evaluate_split", evaluate_split)
    config = tiny_config(demo_dir, max_steps=6, validate_every=1, checkpoint_every=6, best_checkpoint=rule)
    trainer = Trainer(config, tmp_path / "run")
    metrics = trainer.fit()
    val = metrics[metrics["phase"] == "val"]
    assert val["loss"].tolist() == pytest.approx(LOSSES)
    assert val["best"].tolist() == best_checkpoint_steps(LOSSES, rule)
    best = torch.load(trainer.run.checkpoints / BEST, weights_only=True)
    last = torch.load(trainer.run.checkpoints / LAST, weights_only=True)
    assert best["step"] == (6 if rule == "last" else 5)
    assert trainer.best_loss == 2.0  # early stopping and the plateau schedule still follow the loss
    same = all(torch.equal(best["state_dict"][k], last["state_dict"][k]) for k in last["state_dict"])
    assert same == (rule == "last")  # "last": best.pt holds the final EMA weights, as last.pt does
