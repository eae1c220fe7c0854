"""data.distribution: sharded — each rank reads only its shard; statistics and draws as the issue states."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_config

from gfmkit.data.multi import open_stores
from gfmkit.models.statistics import heads_from_stores

SHARDED = """
import json
import numpy as np
from gfmkit.train import Trainer
trainer = Trainer(json.loads({config!r}), {run!r})
draws = [int(i) for batch in trainer.sampler.global_batches(0) for i in batch]
stores = trainer.stores.stores
emit({{"ranges": [[s.start, s.stop, s.total] for s in stores], "read": [len(s) for s in stores],
       "train": len(trainer.train_set), "draws": draws,
       "shard_sizes": np.bincount(trainer.train_set.head, minlength=len(stores)).tolist(),
       "drawn": [[int(trainer.train_set.head[i]), int(trainer.train_set.indices[i])] for i in draws],
       "heads": [[h.name, h.reference_energies, h.shift, h.scale] for h in trainer.model.heads],
       "steps": len(trainer.sampler)}})
trainer.fit()
emit({{"finished": trainer.run.finished() if trainer.is_main else True}})
"""


@pytest.mark.mpi
def test_two_ranks_read_only_their_shards(run_mpi, demo_dir, tmp_path):
    stores = [str(demo_dir / f"{n}.bp") for n in ("bulk", "molecules", "bulk_modulus")]
    config = tiny_config(stores, max_steps=3, validate_every=3, checkpoint_every=3,
                         sampler={"batch_size": 8, "strategy": "proportional"}, data={"distribution": "sharded"})
    result = run_mpi(SHARDED.format(config=json.dumps(config), run=str(tmp_path / "run")), n=2, timeout=240)
    first, second = (emitted[0] for emitted in result.emitted)
    whole = open_stores(stores)
    # each rank opened a contiguous half of every store, and together they cover it
    for k, store in enumerate(whole.stores):
        (a0, a1, total), (b0, b1, _) = first["ranges"][k], second["ranges"][k]
        assert (a0, a1, b0, b1) == (0, b0, a1, total) == (0, a1, a1, len(store))
        assert first["read"][k] + second["read"][k] == len(store)
    # the same number of steps on both ranks; a rank's epoch draws its own shard without replacement
    assert first["steps"] == second["steps"] == -(-max(first["train"], second["train"]) // 4)
    # proportional mixing: every structure of a rank's shard is drawn in the epoch, and the shards are disjoint,
    # so across the ranks every training structure is drawn
    def drawn_in_store(rank):  # (dataset, index in the whole store) of each draw
        return {(head, rank["ranges"][head][0] + index) for head, index in rank["drawn"]}

    assert not drawn_in_store(first) & drawn_in_store(second)
    for rank in (first, second):
        assert set(rank["draws"]) == set(range(rank["train"])) and len(rank["draws"]) >= rank["train"]
        by_dataset: dict[int, list[int]] = {}
        for draw, (head, _) in zip(rank["draws"], rank["drawn"]):
            by_dataset.setdefault(head, []).append(draw)
        for head, draws in by_dataset.items():  # within a dataset's shard: no repeat before a full pass
            first_pass = draws[: rank["shard_sizes"][head]]
            assert len(first_pass) == len(set(first_pass))
    # head statistics reduced over the shards equal the fit on the whole stores
    serial = {h.name: h for h in heads_from_stores(whole, max_z=100)}
    for name, references, shift, scale in first["heads"]:
        assert shift == pytest.approx(serial[name].shift, rel=1e-10, abs=1e-12), name
        assert scale == pytest.approx(serial[name].scale, rel=1e-10)
        for symbol, value in references.items():
            assert value == pytest.approx(serial[name].reference_energies[symbol], rel=1e-10, abs=1e-10)
    assert first["heads"] == second["heads"]
    assert result.emitted[0][1]["finished"]


def test_sharded_batches_by_count(demo_dir, tmp_path):
    from gfmkit.train import Trainer
    from gfmkit.train.config import SamplerConfig
    from gfmkit.train.setup import TrainingError, shard_batch_size

    trainer = Trainer(tiny_config(demo_dir, max_steps=1, data={"distribution": "sharded"}), tmp_path / "run")
    assert not trainer.sharded  # one rank: nothing to shard
    assert shard_batch_size(SamplerConfig(batch_size=8), 2) == 4
    with pytest.raises(TrainingError, match="multiple of the 2 ranks"):
        shard_batch_size(SamplerConfig(batch_size=7), 2)
    with pytest.raises(TrainingError, match="batches by count"):
        shard_batch_size(SamplerConfig(batch_size=8, max_atoms=100), 2)
