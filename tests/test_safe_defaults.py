"""Safe defaults (issue #21): nothing gfmkit loads runs code, and the local controller stays on loopback.

* a source scan fails on eval/exec, pickle/marshal/dill loads, yaml.load and friends, torch.load without
  ``weights_only=True``, numpy's ``allow_pickle=True``, pandas' read_pickle, ``shell=True`` and os.system;
* a checkpoint and a YAML file that carry code are refused, and the code never runs;
* the local ipyparallel controller listens on 127.0.0.1 only.

Quoting of batch-script values is tested with hostile values in tests/test_cluster_scripts.py.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest
import torch

import gfmkit

PACKAGE = Path(gfmkit.__file__).parent

#: Calls that run code from data: (module or None, function); None matches a bare name.
UNSAFE_CALLS = {
    (None, "eval"), (None, "exec"), (None, "__import__"), ("builtins", "eval"), ("builtins", "exec"),
    ("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("marshal", "loads"), ("marshal", "load"),
    ("dill", "load"), ("dill", "loads"), ("cloudpickle", "load"), ("cloudpickle", "loads"), ("shelve", "open"),
    ("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("yaml", "load_all"), ("yaml", "unsafe_load_all"),
    ("os", "system"), ("os", "popen"), ("pd", "read_pickle"), ("pandas", "read_pickle"), ("jsonpickle", "decode"),
}


def _dotted(node: ast.AST) -> tuple[str | None, str] | None:
    if isinstance(node, ast.Name):
        return None, node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id, node.attr
    return None


def _keyword(call: ast.Call, name: str):
    for keyword in call.keywords:
        if keyword.arg == name:
            return keyword.value
    return None


def unsafe_calls(source: str, filename: str = "<source>") -> list[str]:
    """Every call in ``source`` that would run code from a file or a string: ``file:line: why``."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        why = None
        if name in UNSAFE_CALLS:
            why = f"{'.'.join(p for p in name if p)}()"
        elif name == ("torch", "load"):
            flag = _keyword(node, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                why = "torch.load() without weights_only=True"
        elif name is not None and name[1] == "load" and name[0] in ("np", "numpy"):
            flag = _keyword(node, "allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                why = "numpy.load(allow_pickle=...)"
        shell = _keyword(node, "shell")
        if shell is not None and not (isinstance(shell, ast.Constant) and shell.value is False):
            why = "a subprocess with shell=True"
        if why:
            found.append(f"{filename}:{node.lineno}: {why}")
    return found


def test_the_scan_catches_every_unsafe_pattern():
    bad = """
eval(text); exec(code); builtins.eval(x)
pickle.load(fh); pickle.loads(b); marshal.loads(b)
yaml.load(text, Loader=yaml.Loader); yaml.unsafe_load(text); yaml.full_load(text)
torch.load(path); torch.load(path, weights_only=False); torch.load(path, weights_only=flag)
np.load(path, allow_pickle=True); pd.read_pickle(path); os.system(cmd)
subprocess.run(cmd, shell=True)
"""
    assert len(unsafe_calls(bad)) == 16
    good = """
model.eval(); yaml.safe_load(text); torch.load(path, map_location="cpu", weights_only=True)
np.load(path); np.load(path, allow_pickle=False); subprocess.run([a, b], check=True); json.loads(s)
"""
    assert unsafe_calls(good) == []


def test_no_code_path_evaluates_strings_or_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 50
    found = [hit for path in files for hit in unsafe_calls(path.read_text(), str(path.relative_to(PACKAGE.parent)))]
    assert found == []


class _RunsCode:
    """What a malicious checkpoint holds: an object whose unpickling calls a function."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_checkpoint_that_carries_code_is_refused_and_the_code_never_runs(tiny_checkpoint, tmp_path):
    from gfmkit.models import load_model
    from gfmkit.models.checkpoint import CheckpointError

    marker = tmp_path / "ran"
    data = torch.load(tiny_checkpoint, weights_only=True)
    torch.save({**data, "note": _RunsCode(marker)}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt: refused: the file holds Python objects \(io.open\)") as err:
        load_model(tmp_path / "evil.pt")
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("loader", ["dataset", "training", "profile"])
def test_yaml_that_builds_python_objects_is_refused_and_never_runs(tmp_path, loader):
    from gfmkit.cluster import load_profile
    from gfmkit.config import ConfigError, load_config
    from gfmkit.data import DatasetSpec
    from gfmkit.train import TrainConfig

    marker = tmp_path / "ran"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\nlevel_of_theory: x\n")
    load = {"dataset": lambda: load_config(DatasetSpec, path), "training": lambda: load_config(TrainConfig, path),
            "profile": lambda: load_profile(path)}[loader]
    with pytest.raises(ConfigError, match=r"evil.yaml: not valid YAML at line 1, column 7: .*python/object/apply"):
        load()
    assert not marker.exists()


def test_the_local_controller_listens_on_loopback_only(monkeypatch):
    """The arguments gfmkit gives ipyparallel for a local cluster (no processes are started)."""
    import ipyparallel

    from gfmkit.cluster import engines, load_profile
    from gfmkit.cluster.profiles import Profile

    seen = {}

    class Stop(Exception):
        pass

    def capture(**kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(ipyparallel, "Cluster", capture)
    with pytest.raises(Stop):
        engines.start("local", ranks_per_node=1, threads_per_engine=1)
    assert seen["controller_ip"] == "127.0.0.1" and "controller_location" not in seen
    # a profile that says nothing about the controller gets loopback too
    profile = load_profile("local")
    assert Profile.__dataclass_fields__["controller_ip"].default == "127.0.0.1" == profile.controller_ip
    assert os.environ.get("IPP_CONTROLLER_IP") is None  # no environment override in play
