"""Paper figures regenerated from run directories alone (gfmkit.viz.figures, gfmkit figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from gfmkit.viz.figures import classify, regenerate


def fonts_embedded(pdf: Path) -> bool:
    data = pdf.read_bytes()
    return b"FontFile2" in data and b"/Type3" not in data


@pytest.fixture(scope="module")
def paper(tiny_checkpoint, demo_dir, tmp_path_factory) -> Path:
    """A folder holding a copy of the tiny training run, with an evaluation inside it."""
    from gfmkit.train import evaluate

    root = tmp_path_factory.mktemp("figures") / "paper"
    run = root / "tiny"
    shutil.copytree(tiny_checkpoint.parent.parent, run)
    evaluate(run / "checkpoints" / "best.pt", demo_dir, out=run / "eval", max_structures=2, figures=False)
    return root


def test_a_training_run_and_its_evaluation_are_redrawn(paper, tmp_path):
    run = paper / "tiny"
    assert classify(run) == "training run" and classify(run / "eval") == "evaluation" and classify(run / "checkpoints") is None
    table = regenerate(paper, tmp_path / "figures", progress=False)
    assert table["error"].isna().all()
    assert sorted(zip(table["kind"], table["figure"])) == [
        ("evaluation", "error_matrix"), ("evaluation", "parity"), ("evaluation", "per_element"), ("training run", "history")]
    for files in table["files"]:
        assert [Path(f).suffix for f in files] == [".png", ".pdf"]
        assert all(Path(f).stat().st_size > 5_000 for f in files)
    assert (tmp_path / "figures" / "paper-tiny-eval-parity.png").is_file()
    assert fonts_embedded(tmp_path / "figures" / "paper-tiny-history.pdf")


def test_a_directory_that_cannot_be_drawn_is_reported_not_fatal(paper, tmp_path):
    broken = tmp_path / "unfinished"
    broken.mkdir()
    (broken / "finetune.json").write_text(json.dumps({"strategies": ["scratch"], "fractions": [1.0]}))
    (broken / "scratch-1").mkdir()
    (broken / "scratch-1" / "metrics.jsonl").write_text("")  # inside a study: not drawn on its own
    table = regenerate([paper, broken], tmp_path / "figures", formats=("png",), progress=False)
    assert set(table["kind"]) == {"training run", "evaluation", "fine-tuning study"}
    failed = table[table["error"].notna()]
    assert list(failed["source"]) == [str(broken)]


def test_cli(paper, tmp_path):
    ok = run_cli("figures", str(paper), "--out", str(tmp_path / "f"), "--formats", "pdf")
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "paper-tiny-eval-error_matrix.pdf", "paper-tiny-eval-parity.pdf", "paper-tiny-eval-per_element.pdf",
        "paper-tiny-history.pdf"]
    (tmp_path / "empty").mkdir()
    empty = run_cli("figures", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "nothing to draw" in empty.stderr
    missing = run_cli("figures", str(tmp_path / "nope"))
    assert missing.returncode == 1 and "no such directory" in missing.stderr


def test_folders_of_the_same_name_do_not_overwrite_each_other(paper, tmp_path):
    twin = tmp_path / "elsewhere" / paper.name
    shutil.copytree(paper, twin)
    table = regenerate([paper, twin], tmp_path / "figures", formats=("png",), progress=False)
    files = [f for fs in table["files"] for f in fs]
    assert len(files) == len(set(files)) == 8 and (tmp_path / "figures" / "paper-tiny-2-history.png").is_file()
