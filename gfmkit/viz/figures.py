"""Paper figures from run directories alone.

:func:`regenerate` walks the given folders, recognises what each directory holds by the files gfmkit
wrote there, and redraws its figures into one folder, in PNG and in PDF with embedded (TrueType)
fonts, as journals ask:

* a study directory (precision, fine-tuning, scaling, hyperparameter search, ...), by the marker
  file of its declaration in :mod:`gfmkit.studies.registry`: the study's figure, named after it;
* a training run (``metrics.jsonl``): ``history``;
* an evaluation (``error_matrix.csv``, ``gfmkit evaluate``): ``error_matrix``, ``per_element``, ``parity``.

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

from gfmkit.files import atomic_path
from gfmkit.progress import progress_bar
from gfmkit.rundir import ERROR_MATRIX, METRICS_FILE
from gfmkit.studies.registry import studies, study_of
from gfmkit.viz.evaluation import evaluation_figures
from gfmkit.viz.history import plot_history

PAPER_STYLE = {"pdf.fonttype": 42, "ps.fonttype": 42, "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9,
               "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8, "savefig.bbox": "tight"}
#: What ``gfmkit figures`` calls a training run and an evaluation (studies: their declaration's title).
TRAINING_RUN, EVALUATION = "training run", "evaluation"


def _history_figures(path: Path) -> dict[str, Any]:
    return {"history": plot_history(path)}


def classify(path: str | os.PathLike) -> str | None:
    """What a directory holds, by the files gfmkit wrote into it (None: nothing drawable)."""
    path = Path(path)
    study = study_of(path)
    if study is not None:
        return study.title
    if (path / METRICS_FILE).is_file():
        return TRAINING_RUN
    if (path / ERROR_MATRIX).is_file():
        return EVALUATION
    return None


def find_sources(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, Path, str]]:
    """(root given, directory, kind) of everything drawable below ``paths``, in a stable order."""
    study_kinds = {study.title for study in studies().values()}
    found = []
    for root in map(Path, paths):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such directory")
        for directory, subdirs, _ in os.walk(root):
            subdirs.sort()
            kind = classify(directory)
            if kind is not None:
                found.append((root, Path(directory), kind))
            if kind in study_kinds:
                subdirs.clear()  # the study figure covers its runs
    return found


#: kind -> the function that draws a directory of that kind (figure name -> figure)
DRAWERS: dict[str, Callable[[Path], dict[str, Any]]] = {
    **{study.title: study.figures for study in studies().values()},
    TRAINING_RUN: _history_figures, EVALUATION: evaluation_figures}


def check_image_formats(formats: Sequence[str], where: str = "formats") -> None:
    """Raise ValueError naming ``where`` when matplotlib cannot write one of the image ``formats``."""
    from matplotlib.backend_bases import FigureCanvasBase

    supported = FigureCanvasBase.get_supported_filetypes()
    unknown = [f for f in formats if f.lower() not in supported]
    if unknown:
        raise ValueError(f"{where}: matplotlib cannot write {', '.join(unknown)} images; it writes "
                         f"{', '.join(sorted(supported))}")


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
    check_image_formats(formats)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder for figures", str(out))
    rows = []
    stems: set[str] = set()
    for root, directory, kind in progress_bar(find_sources(paths), desc="figures", unit="dir", disable=not progress):
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
