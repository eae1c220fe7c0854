"""Paper figures from run directories alone.

:func:`regenerate` walks the given folders, recognises what each directory holds by the files gfmkit
wrote there, and redraws its figures into one folder, in PNG and in PDF with embedded (TrueType)
fonts, as journals ask:

===========================  ==================================  =====================================
a directory with             is                                  figures
===========================  ==================================  =====================================
``precision.json``           a precision study                   ``precision``
``finetune.json``            a fine-tuning study                 ``finetune``
``scaling.json``             a scaling study                     ``scaling``
``hpo.json``                 a hyperparameter search             ``hpo``
``metrics.jsonl``            a training run                      ``history``
``error_matrix.csv``         an evaluation (``gfmkit evaluate``)  ``error_matrix``, ``per_element``,
                                                                 ``parity``
===========================  ==================================  =====================================

A study's own run directories are not drawn one by one (the study figure covers them); evaluations
inside a training run are. Figure files are named after the directory's path below the folder given
(a numeric suffix when two folders give the same name).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
from tqdm.auto import tqdm

from gfmkit.files import atomic_path

PAPER_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
               "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "savefig.bbox": "tight"}
STUDY_FILES = {"precision.json": "precision study", "finetune.json": "fine-tuning study", "scaling.json": "scaling study",
               "hpo.json": "hyperparameter search"}


def _precision_figures(path: Path) -> dict[str, Any]:
    from gfmkit.viz.precision import precision_figure

    return {"precision": precision_figure(path)}


def _finetune_figures(path: Path) -> dict[str, Any]:
    from gfmkit.viz.finetune import finetune_figure

    return {"finetune": finetune_figure(path)}


def _hpo_figures(path: Path) -> dict[str, Any]:
    from gfmkit.viz.hpo import hpo_figure

    return {"hpo": hpo_figure(path)}


def _scaling_figures(path: Path) -> dict[str, Any]:
    from gfmkit.studies.scaling import scaling_table
    from gfmkit.viz.scaling import scaling_figure

    table = scaling_table(path)
    if "structures_per_s" not in table or table["structures_per_s"].isna().all():
        raise ValueError(f"{path}: no finished scaling run to draw yet")
    return {"scaling": scaling_figure(table, unit="ranks" if (table["nodes"] == 1).all() else "nodes")}


def _evaluation_figures(path: Path) -> dict[str, Any]:
    from gfmkit.train.evaluate import (
        PREDICTIONS,
        plot_error_matrix,
        plot_parity,
        plot_per_element,
    )

    figures = {"error_matrix": plot_error_matrix(pd.read_csv(path / "error_matrix.csv"))}
    if (path / "per_element.csv").is_file():
        figures["per_element"] = plot_per_element(pd.read_csv(path / "per_element.csv"))
    if (path / PREDICTIONS).is_file():
        figures["parity"] = plot_parity(pd.read_csv(path / PREDICTIONS))
    return figures


def _history_figures(path: Path) -> dict[str, Any]:
    from gfmkit.train.evaluate import plot_history

    return {"history": plot_history(path)}


def classify(path: str | os.PathLike) -> str | None:
    """What a directory holds, by the files gfmkit wrote into it (None: nothing drawable)."""
    path = Path(path)
    for name, kind in STUDY_FILES.items():
        if (path / name).is_file():
            return kind
    if (path / "metrics.jsonl").is_file():
        return "training run"
    if (path / "error_matrix.csv").is_file():
        return "evaluation"
    return None


def find_sources(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, Path, str]]:
    """(root given, directory, kind) of everything drawable below ``paths``, in a stable order."""
    found = []
    for root in map(Path, paths):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        for directory, subdirs, _ in os.walk(root):
            subdirs.sort()
            kind = classify(directory)
            if kind is not None:
                found.append((root, Path(directory), kind))
            if kind in STUDY_FILES.values():
                subdirs.clear()  # the study figure covers its runs
    return found


DRAWERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "precision study": _precision_figures, "fine-tuning study": _finetune_figures, "scaling study": _scaling_figures,
    "hyperparameter search": _hpo_figures, "training run": _history_figures, "evaluation": _evaluation_figures}


def regenerate(
    paths: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike = "figures",
    *,
    formats: Sequence[str] = ("png", "pdf"),
    dpi: int = 300,
    progress: bool = True,
) -> pd.DataFrame:
    """Redraw the figures of every study, training run and evaluation below ``paths`` into ``out``.

    Returns one row per figure: source directory, kind, figure, and the files written (each written
    atomically). A directory whose figure cannot be drawn (e.g. a study with no finished run yet)
    gets a row with the error instead of stopping the others.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder for figures", str(out))
    rows = []
    stems: set[str] = set()
    for root, directory, kind in tqdm(find_sources(paths), desc="figures", unit="dir", disable=not progress):
        relative = directory.relative_to(root)
        stem = "-".join((root.absolute().name or "root", *relative.parts))
        base, copy = stem, 1
        while stem in stems:  # two folders of the same name (exp1/runs, exp2/runs): never overwrite
            copy += 1
            stem = f"{base}-{copy}"
        stems.add(stem)
        with plt.rc_context(PAPER_STYLE):
            try:
                figures = DRAWERS[kind](directory)
            except (OSError, ValueError, KeyError, EOFError) as exc:  # EOFError: a truncated gzip
                rows.append({"source": str(directory), "kind": kind, "figure": None, "files": [], "error": str(exc)})
                continue
            for name, fig in figures.items():
                files = []
                for fmt in formats:
                    target = out / f"{stem}-{name}.{fmt}"
                    with atomic_path(target) as tmp:
                        fig.savefig(tmp, format=fmt, dpi=dpi)
                    files.append(str(target))
                plt.close(fig)
                rows.append({"source": str(directory), "kind": kind, "figure": name, "files": files, "error": None})
    return pd.DataFrame(rows, columns=["source", "kind", "figure", "files", "error"])
