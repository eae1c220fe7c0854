"""The study registry: every study declared once, and ``gfmkit figures`` finds studies through it."""

from __future__ import annotations

import inspect

import matplotlib

matplotlib.use("Agg")

import pytest

from gfmkit.studies.registry import Ref, Study, get_study, studies, study_of
from gfmkit.viz import figures


def test_every_study_is_declared_once_with_what_the_cli_needs():
    declared = studies()
    assert set(declared) == {"precision", "finetune", "scaling", "hpo", "screen"}
    assert len({s.marker for s in declared.values()}) == len({s.title for s in declared.values()}) == len(declared)
    for name, study in declared.items():
        assert isinstance(study, Study) and study.name == name and study.command == name
        assert study.help and "\n" not in study.help and study.marker.endswith(".json")
        for function in (study.run, study.table, study.figure):
            assert callable(function.resolve() if isinstance(function, Ref) else function)
        assert "out" in inspect.signature(study.run.resolve() if isinstance(study.run, Ref) else study.run).parameters
    assert get_study("precision") is declared["precision"]
    with pytest.raises(KeyError, match="known: "):
        get_study("screening-someday")


def test_markers_match_the_files_the_studies_write():
    from gfmkit.hpo.search import STUDY as HPO
    from gfmkit.studies.finetune import STUDY as FINETUNE
    from gfmkit.studies.precision import STUDY as PRECISION
    from gfmkit.studies.scaling import PLAN as SCALING
    from gfmkit.studies.screen import STUDY as SCREEN

    assert {s.name: s.marker for s in studies().values()} == {
        "precision": PRECISION, "finetune": FINETUNE, "scaling": SCALING, "hpo": HPO, "screen": SCREEN}


def test_figures_recognise_each_study_through_the_registry(tmp_path):
    for study in studies().values():
        folder = tmp_path / study.name
        (folder / "run-1").mkdir(parents=True)
        (folder / study.marker).write_text("{}")
        (folder / "run-1" / "metrics.jsonl").write_text("")  # a run of the study: covered by its figure
        assert study_of(folder) is study and study.holds(folder)
        assert figures.classify(folder) == study.title
        assert figures.DRAWERS[study.title] == study.figures
    found = figures.find_sources([tmp_path])
    assert sorted(kind for _, _, kind in found) == sorted(s.title for s in studies().values())
    assert study_of(tmp_path) is None and figures.classify(tmp_path) is None


def test_a_study_without_results_is_reported_per_directory(tmp_path):
    (tmp_path / "precision.json").write_text('{"precisions": ["fp64"]}')
    table = figures.regenerate(tmp_path, tmp_path / "figures", formats=("png",), progress=False)
    assert list(table["kind"]) == ["precision study"] and table["error"].notna().all()


def test_ref_imports_on_call():
    ref = Ref("math:hypot")
    assert ref(3.0, 4.0) == 5.0 and ref.resolve().__name__ == "hypot"
