"""EMT with other parameter tables: a second, cheap "level of theory" for the demo data.

ASE's :class:`~ase.calculators.emt.EMT` reads the module-level table ``ase.calculators.emt.parameters``
when it sets up a structure (``initialize`` and ``_calc_cutoff``, both reached from ``calculate``).
:class:`EMTVariant` swaps its own table in around ``EMT.calculate`` and restores ASE's table afterwards,
so it reuses ASE's implementation unchanged (energies, forces and stress stay mutually consistent).

:class:`EMTB` is the variant the demo datasets call "EMT-B": every element's parameters are perturbed
by element-specific factors (:data:`EMT_B_FACTORS`). On the same bulk structures its energies differ
from EMT's by more than one constant per element, and its forces differ by a sizable fraction, which
is what two DFT functionals do to the same structures and what a multi-head model has to absorb.

The swap changes a module attribute for the duration of one calculation: do not run an EMT variant
and plain EMT concurrently in threads of one process (processes and MPI ranks are fine).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import ase.calculators.emt as _emt
from ase.calculators.calculator import all_changes
from ase.calculators.emt import EMT

# Columns of ASE's EMT table, in order.
EMT_COLUMNS = ("E0", "s0", "V0", "eta2", "kappa", "lambda", "n0")

#: Per-element changes that define EMT-B: ``E0`` is shifted (eV), the other listed columns are
#: multiplied. Columns not listed are unchanged. The factors differ between elements on purpose, so
#: that no per-element energy offset maps EMT onto EMT-B. The density decay (``eta2``, ``kappa``) is
#: very sensitive, so changes of 0.2-0.8 % there already move forces by ~10 %. H, C, N and O keep
#: EMT's values (EMT-B labels metals only in the demo).
EMT_B_FACTORS: dict[str, dict[str, float]] = {
    "Al": {"E0": 0.018, "s0": 1.0018, "V0": 1.030, "eta2": 1.0036, "kappa": 0.9970},
    "Cu": {"E0": -0.015, "s0": 1.0030, "V0": 1.024, "eta2": 1.0060, "kappa": 0.9955},
    "Ag": {"E0": 0.012, "s0": 1.0012, "V0": 1.045, "eta2": 1.0075, "kappa": 0.9940},
    "Au": {"E0": -0.024, "s0": 1.0036, "V0": 1.015, "eta2": 1.0024, "kappa": 0.9976},
    "Ni": {"E0": 0.030, "s0": 1.0024, "V0": 1.036, "eta2": 1.0066, "kappa": 0.9946},
    "Pd": {"E0": -0.009, "s0": 1.0015, "V0": 1.042, "eta2": 1.0045, "kappa": 0.9964},
    "Pt": {"E0": 0.021, "s0": 1.0033, "V0": 1.021, "eta2": 1.0084, "kappa": 0.9934},
}

_swap_lock = threading.RLock()


def perturbed_parameters(
    factors: Mapping[str, Mapping[str, float]], base: Mapping[str, tuple[float, ...]] | None = None
) -> dict[str, tuple[float, ...]]:
    """A copy of ASE's EMT table (or ``base``) with ``factors`` applied.

    ``factors[element][column]`` multiplies that column, except ``E0``, which it shifts (eV). Elements
    and columns not named keep their values; an unknown column name is an error.
    """
    base = dict(_emt.parameters if base is None else base)
    table = {element: tuple(float(v) for v in values) for element, values in base.items()}
    for element, changes in factors.items():
        if element not in table:
            raise KeyError(f"no EMT parameters for element {element!r}")
        row = list(table[element])
        for column, value in changes.items():
            if column not in EMT_COLUMNS:
                raise KeyError(f"unknown EMT parameter {column!r}; expected one of {EMT_COLUMNS}")
            i = EMT_COLUMNS.index(column)
            row[i] = row[i] + value if column == "E0" else row[i] * value
        table[element] = tuple(row)
    return table


@contextmanager
def emt_parameters(table: Mapping[str, tuple[float, ...]]) -> Iterator[None]:
    """Make ``table`` ASE's EMT parameter table inside the ``with`` block; ASE's own table comes back after."""
    with _swap_lock:
        saved = _emt.parameters
        _emt.parameters = dict(table)
        try:
            yield
        finally:
            _emt.parameters = saved


class EMTVariant(EMT):
    """ASE's EMT evaluated with another parameter table (``table``), named ``level_of_theory``.

    Accepts EMT's keyword arguments (``asap_cutoff``). The table is used for everything EMT derives
    from it, the neighbour cutoff included.
    """

    level_of_theory = "EMT-variant"
    name = "EMT-variant"

    def __init__(self, table: Mapping[str, tuple[float, ...]], level_of_theory: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.table = dict(table)
        if level_of_theory is not None:
            self.level_of_theory = self.name = level_of_theory

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        """EMT's calculation, with this variant's table in place of ASE's."""
        with emt_parameters(self.table):
            super().calculate(atoms, list(properties), system_changes)


#: EMT-B's parameter table (ASE's EMT table with :data:`EMT_B_FACTORS` applied).
EMT_B_PARAMETERS = perturbed_parameters(EMT_B_FACTORS)


class EMTB(EMTVariant):
    """The "EMT-B" level of theory: EMT with the perturbed table :data:`EMT_B_PARAMETERS`."""

    level_of_theory = "EMT-B"
    name = "EMT-B"

    def __init__(self, **kwargs):
        super().__init__(EMT_B_PARAMETERS, **kwargs)
