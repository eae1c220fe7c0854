"""The study registry: every study (precision, fine-tuning, scaling, hyperparameter search, ...) is
declared once, by a :class:`Study` named ``REGISTRY_ENTRY`` in its own module of :mod:`gfmkit.studies`.

A declaration says how a study directory is recognised (its marker file), what runs the study, what
reads its table and draws its figure from the directory alone, and the CLI subcommand that drives it.
``gfmkit figures`` (:mod:`gfmkit.viz.figures`) and the CLI find studies here, so adding a study is one
module (plus its test and notebook)::

    # gfmkit/studies/screen.py
    REGISTRY_ENTRY = Study(
        name="screen", title="screening", marker="screen.json", help="screen structures with a model",
        run=run_screen, table=screen_table, figure=Ref("gfmkit.viz.screen:screen_figure"))

Functions that live in heavier modules (figures: matplotlib; searches: DeepHyper) are named with a
:class:`Ref`, imported at their first call, so that listing the studies stays cheap.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Ref:
    """A function named ``"package.module:function"``, imported when it is first called."""

    target: str

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports its module)."""
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


@dataclass(frozen=True)
class Study:
    """One kind of study, declared once.

    ``name``: the study's name, its CLI subcommand unless ``command`` says otherwise, and the name of
    its figure. ``title``: what ``gfmkit figures`` calls such a directory. ``marker``: the file the
    study writes into its directory first, by which the directory is recognised. ``help``: one line
    for the CLI. ``run(...)``: runs or continues the study (arguments differ per study) and returns
    its table. ``table(out)`` and ``figure(out)``: its table and figure from the directory ``out``
    alone (``figure`` raises ValueError while nothing is finished to draw). ``more_figures``: further
    figures by name, drawn where the directory has what they need (one that raises ValueError, e.g. a
    Pareto front of a one-objective search, is left out). ``arguments(parser)``: optional, adds the
    study's CLI arguments to an ``argparse`` parser.
    """

    name: str
    title: str
    marker: str
    help: str
    run: Callable[..., Any]
    table: Callable[[str | os.PathLike], Any]
    figure: Callable[[str | os.PathLike], Any]
    command: str = ""
    arguments: Callable[[Any], None] | None = None
    more_figures: tuple[tuple[str, Callable[[str | os.PathLike], Any]], ...] = ()

    def __post_init__(self) -> None:
        if not self.command:
            object.__setattr__(self, "command", self.name)

    def holds(self, path: str | os.PathLike) -> bool:
        """Whether ``path`` is a directory of this study (its marker file is there)."""
        return (Path(path) / self.marker).is_file()

    def figures(self, path: str | os.PathLike) -> dict[str, Any]:
        """The study's figures from the directory ``path``, by name: its own, then those of
        ``more_figures`` that the directory can draw."""
        drawn = {self.name: self.figure(path)}
        for name, draw in self.more_figures:
            try:
                drawn[name] = draw(path)
            except ValueError:  # not this directory's kind of figure (yet)
                continue
        return drawn


#: The module attribute that declares a study.
ENTRY = "REGISTRY_ENTRY"


@cache
def studies() -> dict[str, Study]:
    """Every declared study by name, in the order of their modules' names."""
    import gfmkit.studies as package

    found: dict[str, Study] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
        entry = getattr(importlib.import_module(f"{package.__name__}.{module}"), ENTRY, None)
        if isinstance(entry, Study):
            if entry.name in found:
                raise RuntimeError(f"two studies are named {entry.name!r} (gfmkit.studies.{module} and another)")
            found[entry.name] = entry
    return found


def get_study(name: str) -> Study:
    """The study called ``name``; a KeyError naming the known ones otherwise."""
    try:
        return studies()[name]
    except KeyError:
        raise KeyError(f"no study {name!r}; known: {', '.join(studies())}") from None


def study_of(path: str | os.PathLike) -> Study | None:
    """The study whose directory ``path`` is (by its marker file), or None."""
    return next((study for study in studies().values() if study.holds(path)), None)
