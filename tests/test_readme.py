"""Every Python snippet in the README runs, in order, as a new user would paste them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_the_readme_has_the_six_steps():
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 6
    assert [b.splitlines()[0][:4] for b in blocks[:6]] == ["# 1.", "# 2.", "# 3.", "# 4.", "# 5.", "# 6."]


@pytest.mark.slow
def test_readme_snippets_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, block in enumerate(python_blocks(README.read_text()), start=1):
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)  # noqa: S102
        except Exception as exc:  # noqa: BLE001 - name the block that failed
            raise AssertionError(f"README python block {number} failed: {exc!r}\n{block}") from exc
    summary = namespace["result"].summary
    assert set(summary["dataset"]) == {"cu_emt", "cu_morse"}
    assert (summary["forces_mae"] < 0.2).all()  # eV/Å; a zero predictor: 0.5 (EMT), 1.3 (Morse)
    atoms = namespace["atoms"]
    assert abs(atoms.get_potential_energy()) < 1e3 and atoms.calc.results["forces"].shape == (len(atoms), 3)
    tuned = namespace["tuned"]
    assert tuned.model.head_names == ["cu_emt", "cu_morse", "cu_morse2"]
    assert set(tuned.test["dataset"]) == {"cu_morse2"} and (tuned.test["forces_mae"] < 1.0).all()
