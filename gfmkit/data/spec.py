"""What a dataset is: its name, level of theory, declared targets, where labels come from, how to split.

These dataclasses load from YAML with :func:`gfmkit.config.load_config` (unknown keys are errors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from gfmkit import keys

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class LabelSpec:
    """Where each label is read from an ``ase.Atoms`` and in which unit it is given.

    ``None`` for energy/forces/stress means: the attached calculator's results (``atoms.calc``), then
    ``info``/``arrays`` under the same name. A string names an ``atoms.info`` key (per-structure values)
    or an ``atoms.arrays`` key (per-atom values, forces). ``virial`` (an ``info`` key, energy units) is
    turned into stress = -virial / volume. Stress may be 3x3 or Voigt (xx, yy, zz, yz, xz, xy).
    """

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None
    virial: str | None = None
    charge: str | None = None
    spin: str | None = None
    properties: dict[str, str] = field(default_factory=dict)  # target name -> info key
    energy_unit: str = "eV"
    length_unit: str = "Angstrom"
    forces_unit: str = "eV/Angstrom"
    stress_unit: str = "eV/Angstrom^3"

    def __post_init__(self) -> None:
        from gfmkit.data import units

        for name, factor in (("energy_unit", units.energy_factor), ("length_unit", units.length_factor),
                             ("forces_unit", units.forces_factor), ("stress_unit", units.stress_factor)):
            try:
                factor(getattr(self, name))
            except (KeyError, ValueError) as exc:
                raise ValueError(f"labels.{name}: {exc.args[0] if exc.args else exc}") from None


@dataclass
class ValidationSpec:
    """Checks applied to every structure on ingest, and what to do with a bad one."""

    policy: Literal["fail", "skip"] = "fail"
    min_distance: float = 0.1  # Å; closer pairs (periodic images included) are an error
    elements: list[str] | None = None  # allowed element symbols; None allows every real element
    min_cell_volume: float = 1e-6  # Å^3 spanned by the periodic cell vectors

    def __post_init__(self) -> None:
        for name in ("min_distance", "min_cell_volume"):
            if not getattr(self, name) >= 0:  # also NaN
                raise ValueError(f"validation.{name} must be 0 or more, got {getattr(self, name)}")


@dataclass
class DatasetSpec:
    """A dataset: name (becomes the head name), level of theory, declared targets, labels, split."""

    name: str
    level_of_theory: str
    targets: list[str] = field(default_factory=lambda: [keys.ENERGY, keys.FORCES])
    labels: LabelSpec = field(default_factory=LabelSpec)
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    reference_energies: dict[str, float] | None = None  # isolated-atom energies, eV, by element symbol
    split_seed: int = 0
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    description: str = ""

    def __post_init__(self) -> None:
        # plain dicts (as a user writes them in Python) become the sections they describe; a wrong key is
        # named here, not blamed on the first structure
        from gfmkit.config import load_config

        if isinstance(self.labels, Mapping):
            self.labels = load_config(LabelSpec, self.labels, where=f"dataset {self.name!r}: labels")
        if isinstance(self.validation, Mapping):
            self.validation = load_config(ValidationSpec, self.validation, where=f"dataset {self.name!r}: validation")
        if not _NAME.match(self.name):
            raise ValueError(f"dataset name {self.name!r} must be letters, digits and _.+- (it names a head)")
        if not self.level_of_theory:
            raise ValueError(f"dataset {self.name!r} needs a level_of_theory label")
        if not self.targets:
            raise ValueError(f"dataset {self.name!r} declares no targets")
        unknown = [t for t in self.targets if t not in keys.POTENTIAL_TARGETS and t not in self.labels.properties]
        if unknown:
            raise ValueError(
                f"dataset {self.name!r}: target {unknown[0]!r} is neither energy/forces/stress nor a key of "
                f"labels.properties {sorted(self.labels.properties)}"
            )
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"split_fractions {self.split_fractions} must be three non-negative numbers summing to 1")
        self.split_fractions = fractions  # type: ignore[assignment]

    @property
    def property_targets(self) -> list[str]:
        """Declared graph-level scalar targets other than energy/forces/stress."""
        return [t for t in self.targets if t not in keys.POTENTIAL_TARGETS]
