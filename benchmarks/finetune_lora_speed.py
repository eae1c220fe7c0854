"""Inference cost of a head added by LoRA fine-tuning: forces of a batch under a pretrained head, under the
LoRA head with its adapters unmerged and merged, and every head's energy at once.

    .venv/bin/python benchmarks/finetune_lora_speed.py [--quick] [--repeats N] [--out FILE.json]

A PaiNN of the reference size (128 features, 3 layers, 5 Å; ``--quick``: 32 features) with the demo's
bulk head and one head added by :func:`gfmkit.models.transfer.add_heads` with rank-4 adapters whose
``B`` is random (a trained adapter costs the same); a batch of 16 bulk cells of 32 atoms (fp32, one
thread). Times are interleaved medians. What it shows: a batch of the new head only runs one encoder
pass (the adapted one); merged adapters make that pass as fast as a plain one; a batch that reads
every head (``energies=True``) runs both passes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common


def main(argv: list[str] | None = None) -> dict:
    args = common.parser(__doc__.split("\n\n")[0]).parse_args(argv)
    torch.set_num_threads(1)
    from ase.build import bulk

    from gfmkit.data.graphs import collate, structure_graph
    from gfmkit.models import HeadConfig, ModelConfig
    from gfmkit.models.adapters import EncoderAdapters
    from gfmkit.models.multihead import MultiHeadPaiNN
    from gfmkit.models.transfer import add_heads

    hidden = 32 if args.quick else 128
    torch.manual_seed(0)
    base = MultiHeadPaiNN(ModelConfig(hidden=hidden, layers=3, cutoff=5.0), [HeadConfig("bulk")])
    model = add_heads(base, [HeadConfig("new")], adapted=True)
    model.set_adapters(EncoderAdapters(model.encoder, rank=4))
    with torch.no_grad():
        for layer in model.adapters.layers.values():
            layer.b.normal_(0.0, 0.01)
    model.eval()
    cells = []
    for k in range(16):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        atoms.rattle(0.05, seed=k)
        cells.append({"numbers": atoms.numbers, "positions": atoms.positions, "cell": atoms.cell[:], "pbc": atoms.pbc})

    def batch_of(head: int):
        return collate([structure_graph(arrays, head, 5.0, dtype=torch.float32) for arrays in cells])

    old, new = batch_of(0), batch_of(1)
    repeats = args.repeats or (3 if args.quick else 7)

    def forces(batch):
        return lambda: model(batch, forces=True)

    timings = common.time_interleaved({"pretrained_head": forces(old), "lora_head_unmerged": forces(new),
                                       "every_head_unmerged": lambda: model(old, forces=True, energies=True)},
                                      repeats=repeats)
    model.merge_adapters()
    timings.update(common.time_interleaved({"pretrained_head_2": forces(old), "lora_head_merged": forces(new)},
                                           repeats=repeats))
    base_time = timings["pretrained_head"]["median_s"]
    report = {
        "benchmark": "finetune_lora_speed",
        "quick": args.quick,
        "machine": {**common.machine_info(), "threads": 1},
        "setup": {"hidden": hidden, "layers": 3, "rank": 4, "structures": len(cells), "atoms_per_structure": 32,
                  "dtype": "float32", "repeats": repeats},
        "timings": timings,
        "relative_to_pretrained_head": {name: t["median_s"] / base_time for name, t in timings.items()},
    }
    common.emit(report, args.out)
    return report


if __name__ == "__main__":
    main()
