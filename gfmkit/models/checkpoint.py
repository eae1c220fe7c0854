"""Checkpoints: config + state dict + head metadata + gfmkit version, as plain data and tensors.

Loaded with ``torch.load(weights_only=True)``: no pickled code ever runs. ``load_model(path)``
rebuilds the model from the file alone. Older schemas migrate through ``MIGRATIONS``; a newer schema
or a truncated/corrupt file is a clear error.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gfmkit._version import __version__
from gfmkit.config import load_config
from gfmkit.files import atomic_path
from gfmkit.models.config import LEGACY, HeadConfig, ModelConfig
from gfmkit.models.multihead import MultiHeadPaiNN

FORMAT = "gfmkit-checkpoint"
SCHEMA_VERSION = 4


class CheckpointError(ValueError):
    """A checkpoint cannot be loaded: missing, truncated, not gfmkit's, or from a newer gfmkit."""


def checkpoint_dict(model: MultiHeadPaiNN, **extra: Any) -> dict[str, Any]:
    """Everything that rebuilds ``model``, plus ``extra`` plain-data entries (e.g. training state)."""
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "gfmkit_version": __version__,
        "model": "MultiHeadPaiNN",
        "config": asdict(model.config),
        "heads": [asdict(h) for h in model.heads],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "state_dict": model.state_dict(),
        **extra,
    }


def save_checkpoint(model: MultiHeadPaiNN, path: str | os.PathLike, **extra: Any) -> Path:
    """Write a checkpoint atomically (temporary file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(checkpoint_dict(model, **extra), tmp)
    return Path(path)


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint's contents (migrated to the current schema), loaded without unpickling code."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, a device this machine lacks, ...
        raise CheckpointError(refusal(path, exc, map_location)) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a gfmkit checkpoint")
    version = int(data.get("schema_version", 0))
    if version > SCHEMA_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint schema {version} is newer than this gfmkit understands ({SCHEMA_VERSION}); upgrade gfmkit"
        )
    while version < SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version = int(data["schema_version"])
    return data


def refusal(path: str | os.PathLike, exc: BaseException, map_location: Any = "cpu") -> str:
    """One line saying why ``torch.load(path, weights_only=True, map_location=...)`` refused ``path``.

    torch's own message suggests loading again with ``weights_only=False``: for a file from elsewhere that
    is exactly what must not be done (it runs whatever code the file holds), so that advice is dropped."""
    text = str(exc)
    device = re.search(r"on a (\w+) device but torch\.\w+\.is_available\(\) is False", text)
    if device:
        return (f"{path}: cannot be loaded onto device {str(map_location)!r}: this machine has no {device[1]} device "
                "(use --device cpu, or device='cpu')")
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", text)
    if found:
        return (f"{path}: refused: the file holds Python objects ({found[1]}) whose loading runs code, which no "
                "gfmkit checkpoint does; gfmkit loads only tensors and plain data (weights_only=True)")
    if "zip archive" in text or "central directory" in text:
        return f"{path}: not a readable checkpoint: the file is truncated or corrupt (its zip archive cannot be read)"
    return f"{path}: not a readable checkpoint: not a file torch.save wrote (truncated, corrupt, or another kind of file)"


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> MultiHeadPaiNN:
    """Rebuild the model a checkpoint describes, with its weights, dtype and head statistics."""
    data = read_checkpoint(path, map_location)
    where = f"{path} (config)"
    config = load_config(ModelConfig, data["config"], where=where)
    heads = [load_config(HeadConfig, h, where=f"{path} (heads)") for h in data["heads"]]
    model = MultiHeadPaiNN(config, heads).to(getattr(torch, data.get("dtype", "float32")))
    try:
        model.load_state_dict(data["state_dict"])
    except RuntimeError:
        raise CheckpointError(f"{path}: state dict does not match its config: "
                              f"{state_mismatch(model.state_dict(), data['state_dict'])}") from None
    return model.to(map_location)


def state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, Any]) -> str:
    """How the weights ``found`` differ from the ``expected`` ones, in one short line (torch's own
    message lists every tensor)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    sizes = [k for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k].shape)]
    parts = []
    if sizes:
        k = sizes[0]
        parts.append(f"{len(sizes)} tensor(s) of another shape (first {k}: {tuple(found[k].shape)} in the file, "
                     f"{tuple(expected[k].shape)} for the config)")
    if missing:
        parts.append(f"{len(missing)} missing (first {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]})")
    return "; ".join(parts) or "the tensors do not load"


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 0 is the minimal layout (config, state dict, head names under ``datasets``, no dtype) that
    hand-written conversions of other codes' weights produce; schema 1 adds head metadata and dtype."""
    data = dict(data)
    if "heads" not in data:
        data["heads"] = [{"name": name} for name in data.pop("datasets")]
    data.setdefault("dtype", "float32")
    data["schema_version"] = 1
    return data


def _migrate_1_to_2(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 2 records the radial basis and initialisation in the model config; a config without them
    was built with the only ones gfmkit had then (``LEGACY``: the sine basis, torch's initialisation),
    so the model loads and predicts exactly as before."""
    data = dict(data)
    data["config"] = {**{k: LEGACY[k] for k in ("radial_basis", "init")}, **data["config"]}
    data["schema_version"] = 2
    return data


def _migrate_2_to_3(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 3 records the cutoff function; a config without it was built with the cosine cutoff
    (``LEGACY``), the only one gfmkit had then."""
    data = dict(data)
    data["config"] = {"cutoff_fn": LEGACY["cutoff_fn"], **data["config"]}
    data["schema_version"] = 3
    return data


def _migrate_3_to_4(data: dict[str, Any]) -> dict[str, Any]:
    """Schema 4 records the message gain; a config without it multiplied the messages by nothing
    (``LEGACY``: gain 1), so its stored weights predict exactly as before."""
    data = dict(data)
    data["config"] = {"message_gain": LEGACY["message_gain"], **data["config"]}
    data["schema_version"] = 4
    return data


MIGRATIONS = {0: _migrate_0_to_1, 1: _migrate_1_to_2, 2: _migrate_2_to_3, 3: _migrate_3_to_4}
