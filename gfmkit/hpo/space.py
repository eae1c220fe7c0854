"""Search spaces over training configs: dotted config keys -> ranges or choices, as a DeepHyper HpProblem.

A space is a mapping (from YAML or Python) whose keys are paths into :class:`~gfmkit.train.TrainConfig`
and whose values say what to try::

    optimizer.lr: [1.0e-4, 1.0e-2, log-uniform]    # a real range, sampled log-uniformly
    model.hidden: {choices: [32, 64, 128]}         # categorical
    model.layers: [1, 4]                           # an integer range (both ends integers)
    sampler.temperature: [1.0, 4.0]                # a real range

Every key is checked against the config before a search starts (an unknown key is an error naming it).
``loss.*`` keys are refused while the validation loss is an objective (``objectives`` holds ``loss``):
they change its scale, so trials with different loss settings could not be compared; search them
with the ``error`` objective (:mod:`gfmkit.hpo.objectives`), which does not depend on them.

The default space for multi-head PaiNN ships with gfmkit: :func:`default_space` (``spaces/painn.yaml``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTIONS = ("uniform", "log-uniform")
#: Search spaces shipped with gfmkit (package data), by name.
SPACES_DIR = Path(__file__).with_name("spaces")


def default_space(name: str = "painn") -> dict[str, Any]:
    """A search space shipped with gfmkit (``gfmkit/hpo/spaces/<name>.yaml``) as a mapping."""
    path = SPACES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SPACES_DIR.glob("*.yaml")))
        raise ValueError(f"no search space named {name!r}; shipped: {known}")
    return read_space(path)


def read_space(path: str | Path) -> dict[str, Any]:
    """A search space from a YAML file (a mapping of dotted config keys)."""
    space = yaml.safe_load(Path(path).read_text())
    if not isinstance(space, dict):
        raise ValueError(f"{path}: a search space is a mapping of config keys")
    return space


def set_path(config: Mapping[str, Any], parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` (nested dicts) with each dotted key of ``parameters`` set."""
    out = copy.deepcopy(dict(config))
    for key, value in parameters.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"search space key {key!r}: {part!r} is not a config section")
            node = child
        node[leaf] = value.item() if hasattr(value, "item") else value  # numpy scalars from the sampler
    return out


def _dimension(key: str, value: Any) -> tuple[Any, Any]:
    """(DeepHyper dimension, default value) of one entry."""
    if isinstance(value, Mapping):
        if set(value) != {"choices"} or not isinstance(value["choices"], list) or not value["choices"]:
            raise ValueError(f"search space {key!r}: a mapping must be {{choices: [...]}}, got {value!r}")
        return list(value["choices"]), value["choices"][0]
    if isinstance(value, (list, tuple)) and len(value) in (2, 3) and all(isinstance(v, (int, float)) for v in value[:2]):
        low, high = value[0], value[1]
        distribution = value[2] if len(value) == 3 else "uniform"
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"search space {key!r}: distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if not low < high:
            raise ValueError(f"search space {key!r}: range needs low < high, got {value!r}")
        if distribution == "log-uniform" and low <= 0:
            raise ValueError(f"search space {key!r}: a log-uniform range must be positive, got {value!r}")
        integer = isinstance(low, int) and isinstance(high, int) and not isinstance(low, bool)
        if integer:
            bounds, default = (int(low), int(high)), (low + high) // 2
        else:
            bounds = (float(low), float(high))
            default = (bounds[0] * bounds[1]) ** 0.5 if distribution == "log-uniform" else sum(bounds) / 2
        return ((*bounds, distribution) if distribution != "uniform" else bounds), default
    raise ValueError(f"search space {key!r}: give [low, high], [low, high, log-uniform] or {{choices: [...]}}, got {value!r}")


def search_problem(space: Mapping[str, Any]) -> Any:
    """The DeepHyper ``HpProblem`` of ``space`` (see the module docstring)."""
    from gfmkit.hpo.backend import deephyper

    HpProblem = deephyper()[0]
    if not space:
        raise ValueError("the search space is empty")
    problem = HpProblem()
    for key, value in space.items():
        dimension, default = _dimension(str(key), value)
        problem.add_hyperparameter(dimension, str(key), default_value=default)
    return problem


def check_space(config: Mapping[str, Any], space: Mapping[str, Any], objectives: Sequence[str] = ("loss",)) -> None:
    """Raise a clear error if a key of ``space`` is not a config key, or a value of it is refused."""
    from gfmkit.train import load_train_config

    for key, value in space.items():
        if str(key).startswith("loss.") and "loss" in objectives:
            raise ValueError(f"search space {key!r}: loss settings change the objective's scale (the validation "
                             "loss), so trials would not be comparable; fix them in the base config, or search "
                             "the 'error' objective instead of 'loss'")
        dimension, _ = _dimension(str(key), value)
        choices = dimension if isinstance(dimension, list) else [dimension[0], dimension[1]]
        for candidate in choices:
            try:
                load_train_config(set_path(config, {key: candidate}))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"search space {key!r} = {candidate!r}: {exc}") from None
