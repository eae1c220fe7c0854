"""An ASE calculator for one head of a gfmkit model (relaxations with ase.optimize, MD with ase.md)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.data import chemical_symbols

from gfmkit import keys
from gfmkit.data.graphs import collate, structure_graph


class ModelInputError(ValueError):
    """Atoms a model cannot take: an atomic number beyond its embedding table (``max_z``)."""


def check_numbers(model: Any, numbers: np.ndarray) -> None:
    """Raise :class:`ModelInputError` when an atomic number in ``numbers`` is beyond ``model``'s ``max_z``
    (its embedding table would be indexed out of range)."""
    max_z = model.config.max_z
    above = sorted({int(z) for z in np.asarray(numbers) if z > max_z or z < 1})
    if above:
        z = above[-1] if above[-1] > max_z else above[0]
        symbol = chemical_symbols[z] if 0 < z < len(chemical_symbols) else "?"
        raise ModelInputError(f"atomic number {z} ({symbol}) is outside this model's elements (1 to max_z = {max_z})")


def check_store_elements(max_z: int, stores: Any) -> None:
    """Raise :class:`ModelInputError` naming the first store (of a store, a MultiStore or a list) that
    holds an element beyond a model's ``max_z``, before any of its structures reaches the model."""
    for store in getattr(stores, "stores", None) or ([stores] if hasattr(stores, "elements") else stores):
        beyond = [e for e in store.elements if chemical_symbols.index(e) > max_z]
        if beyond:
            raise ModelInputError(f"{store.path}: element(s) {', '.join(beyond)} beyond the model's max_z = {max_z} "
                                  "(it has no embedding for them; a new model needs a larger model.max_z)")


def trained_elements(head: Any) -> set[str]:
    """The elements ``head`` saw in training (its composition, else its reference energies; empty: unknown)."""
    return set(head.training_composition())


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
        self._warned: set[str] = set()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        batch = self._batch()
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.model(batch, forces=True, stress=want_stress)
        self._store(out[keys.ENERGY][0], out[keys.FORCES], out[keys.STRESS][0] if want_stress else None)

    def _batch(self) -> Any:
        """A batch of ``self.atoms`` alone, labelled with this calculator's head."""
        atoms = self.atoms
        check_numbers(self.model, atoms.numbers)
        self._warn_untrained(set(atoms.get_chemical_symbols()))
        arrays = {
            "numbers": atoms.numbers,
            "positions": atoms.positions,
            "cell": atoms.cell[:] if atoms.pbc.any() else np.zeros((3, 3)),
            "pbc": atoms.pbc,
            "charge": atoms.info.get(keys.CHARGE),
            "spin": atoms.info.get(keys.SPIN),
        }
        graph = structure_graph(arrays, self.head_index, self.model.config.cutoff, dtype=self.dtype)
        return collate([graph]).to(self.device)

    def _trained(self) -> tuple[str, set[str]]:
        """Who is asked (for the warning) and the elements it was trained on (empty: not recorded)."""
        head = self.model.heads[self.head_index]
        return f"head {head.name!r} was", trained_elements(head)

    def _warn_untrained(self, elements: set[str]) -> None:
        """Warn once per element that the asked head(s) never saw in training: the numbers for it are guesses."""
        who, known = self._trained()
        new = sorted(elements - known - self._warned) if known else []
        if new:
            self._warned.update(new)
            warnings.warn(f"{who} not trained on {', '.join(new)}: its energies and forces for them are "
                          "extrapolations, not predictions", UserWarning, stacklevel=4)

    def _store(self, energy: torch.Tensor, forces: torch.Tensor, stress: torch.Tensor | None) -> None:
        energy = float(energy)
        self.results = {"energy": energy, "free_energy": energy, "forces": forces.cpu().double().numpy()}
        if stress is not None:
            s = stress.cpu().double().numpy()
            self.results["stress"] = np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


class WeightedCalculator(GFMCalculator):
    """Energy, forces and stress of ``model``'s composition-weighted energy heads
    (:func:`gfmkit.models.predict.predict` with ``forces="weighted"``): ``weights`` "auto" (the gate
    when fitted, else the training-free overlap), "gate", "overlap", "uniform" or a mapping head ->
    weight; ``target`` the head whose references the energy carries (default: the first energy head).
    ``results`` also holds ``head_weights`` and ``head_energies`` (dicts by head name, eV) and
    ``head_energy_spread`` (eV/atom, the heads' disagreement)."""

    def __init__(self, model: Any, weights: Any = "auto", target: Any = None, **kwargs: Any):
        from gfmkit.models.weighting import default_target

        energy_head = default_target(model)
        super().__init__(model, energy_head, **kwargs)
        self.head = "weighted"
        self.weights = weights
        self.target = energy_head if target is None else target

    def _trained(self) -> tuple[str, set[str]]:
        """No energy head was trained on an element outside the union of their elements."""
        heads = [h for h in self.model.heads if h.kind == "energy"]
        sets = [trained_elements(h) for h in heads]
        return "no energy head was", set().union(*sets) if all(sets) else set()

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        Calculator.calculate(self, atoms, properties, system_changes)
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        heads = [h.name for h in self.model.heads if h.kind == "energy"]
        out = self.model.predict(self._batch(), heads=heads, forces="weighted", stress=want_stress,
                                 weights=self.weights, target=self.target)
        self._store(out.energy[0], out.forces, out.stress[0] if want_stress else None)
        self.results["head_weights"] = {n: float(w) for n, w in zip(out.heads, out.weights[0])}
        self.results["head_energies"] = {n: float(e) for n, e in zip(out.heads, out.energies[0])}
        self.results["head_energy_spread"] = float(out.energy_spread[0])
