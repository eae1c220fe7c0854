"""An ASE calculator for one head of a gfmkit model (relaxations with ase.optimize, MD with ase.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from gfmkit import keys
from gfmkit.data.graphs import collate, structure_graph


class GFMCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and, for fully periodic cells, stress (eV/Å^3, ASE's Voigt order) of
    ``model``'s head ``head``. Charge and spin come from ``atoms.info`` (``charge``, ``spin``) when the
    model is conditioned on them."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: Any, head: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.model = model.eval()
        self.head = head
        self.head_index = model.head_index(head)
        if model.heads[self.head_index].kind != "energy":
            raise ValueError(f"head {head!r} predicts {model.heads[self.head_index].target!r}, not an energy")
        parameter = next(model.parameters())
        self.dtype = torch.float64 if parameter.dtype == torch.float64 else torch.float32
        self.device = parameter.device

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        arrays = {
            "numbers": atoms.numbers,
            "positions": atoms.positions,
            "cell": atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3)),
            "pbc": atoms.pbc,
            "charge": atoms.info.get(keys.CHARGE),
            "spin": atoms.info.get(keys.SPIN),
        }
        graph = structure_graph(arrays, self.head_index, self.model.config.cutoff, dtype=self.dtype)
        batch = collate([graph]).to(self.device)
        want_stress = "stress" in properties and bool(atoms.pbc.all())
        out = self.model(batch, forces=True, stress=want_stress)
        energy = float(out[keys.ENERGY][0])
        self.results = {"energy": energy, "free_energy": energy, "forces": out[keys.FORCES].cpu().double().numpy()}
        if want_stress:
            s = out[keys.STRESS][0].cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])
