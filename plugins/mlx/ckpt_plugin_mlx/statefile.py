"""The state JSON beside a step file, with a format version and the companion files it names.

The seed writes ``{"step", "epoch", "metrics"}`` and nothing else (version 0: no
``format_version`` key). Version 1 keeps those keys where they were, so a seed-style
resume still reads them, and adds:

    "format_version": 1
    "best_metric", "scheduler", "rng", "data_position", "config", "extra"   when set
    "optimizer": {"file": "step_XXXXXX_optimizer.safetensors", "kind", "param_state", ...}
    "tensors_file": "step_XXXXXX_state.safetensors"    tensors inside the fields above
    "train_state": null                                a step written without training state

Values are ``ckpt_core.tree`` JSON (plain JSON unless they hold tensors, tuples or bytes).
Reading version 0 migrates: known keys become TrainState fields, unknown keys go to
``extra``, and an ``_optimizer.safetensors`` beside it is read by parameter names.
Nothing here reads tensor data: companion files are opened lazily (headers only).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs

from ckpt_core import jsonfile, safetensors_io, tree
from ckpt_core.errors import CorruptInput, LossyConversion
from ckpt_core.model import TrainState
from ckpt_core.tensor import Tensor

from . import names, optimizer, weights

VERSION = 1
SEED_KEYS = ("step", "epoch", "metrics")
FIELDS = ("best_metric", "scheduler", "rng", "data_position", "config", "extra")


def read(state_path: Path, weights_path: Path) -> TrainState | None:
    """The training state in ``state_path`` (beside ``weights_path``)."""
    data = jsonfile.read_object(state_path)
    version = data.pop("format_version", 0)
    if version == 0:
        return _migrated(data, state_path, weights_path)
    if version != VERSION:
        raise CorruptInput(f"{state_path}: format_version {version!r}; this ckpt-plugin-mlx reads up to {VERSION} (upgrade it)")
    if "train_state" in data and data["train_state"] is None:
        return None
    directory = state_path.parent
    try:
        tensors = _open(directory, data.pop("tensors_file", None), state_path)
        opt = data.pop("optimizer", None)
        if opt is not None:
            file = opt.pop("file")
            opt = optimizer.decode(opt, _open(directory, file, state_path), str(state_path))
        fields = tree.decode(data, tensors)
    except (KeyError, TypeError, AttributeError) as e:
        raise CorruptInput(f"{state_path}: malformed state ({type(e).__name__}: {e})") from None
    return _state(fields, opt, state_path)


def _open(directory: Path, file: Any, named_by: Path) -> dict[str, Tensor]:
    if file is None:
        return {}
    return safetensors_io.open_file(safetensors_io.plain_file(directory, file, named_by))[0]


def _migrated(data: dict[str, Any], state_path: Path, weights_path: Path) -> TrainState:
    """A version-0 (seed) state: plain JSON fields, and the optimizer file found by name."""
    opt = None
    opt_path = names.companion(weights_path, names.OPTIMIZER)
    if opt_path.is_file():
        params = safetensors_io.read_header(weights_path)[0] if weights_path.is_file() else {}
        opt = optimizer.from_flat(safetensors_io.open_file(opt_path)[0], params)
    return _state(data, opt, state_path)


def _state(fields: dict[str, Any], opt, state_path: Path) -> TrainState:
    """A TrainState of the known fields; keys it has no field for are kept in ``extra``."""
    known = {k: fields.pop(k) for k in (*SEED_KEYS, *FIELDS) if k in fields and k != "extra"}
    extra = fields.pop("extra", {})
    if not isinstance(extra, dict):
        raise CorruptInput(f"{state_path}: extra must be an object, not {extra!r}")
    ts = TrainState(**known, extra={**extra, **fields}, optimizer=opt)
    for key in ("step", "epoch"):
        value = getattr(ts, key)
        if value is not None and (type(value) is not int):
            raise CorruptInput(f"{state_path}: {key} must be an integer, not {value!r}")
    if ts.metrics is not None and not isinstance(ts.metrics, dict):  # null: no metrics yet (kept as it is)
        raise CorruptInput(f"{state_path}: metrics must be an object or null, not {ts.metrics!r}")
    return ts


@attrs.frozen
class Plan:
    """What writing a step's state will create: the JSON text and each tensor file."""

    state_json: bytes
    files: dict[str, dict[str, Tensor]]


def plan(ts: TrainState | None, stem: str) -> Plan:
    """The files for ``ts`` under ``stem``; LossyConversion (before anything is written)
    for optimizer tensors MLX could not load."""
    data: dict[str, Any] = {"format_version": VERSION}
    files: dict[str, dict[str, Tensor]] = {}
    if ts is None:
        data["train_state"] = None
        return Plan(_dumps(data), files)
    fields = {k: getattr(ts, k) for k in SEED_KEYS}
    fields.update((k, getattr(ts, k)) for k in FIELDS if not _unset(k, getattr(ts, k)))
    encoded, tensors = tree.encode(fields)
    data.update(encoded)
    if ts.optimizer is not None:
        record, opt_tensors = optimizer.encode(ts.optimizer)
        bad = [k for k, t in opt_tensors.items() if t.dtype not in weights.DTYPES]
        if bad:
            raise LossyConversion(f"optimizer state tensors {', '.join(bad[:3])} are {opt_tensors[bad[0]].dtype}, which MLX cannot load; "
                                  "convert to canonical to keep them, or write weights only (a .safetensors destination with "
                                  "--option weights_only=true). Nothing was written.")
        file = stem + names.OPTIMIZER
        files[file] = opt_tensors
        data["optimizer"] = {"file": file, **record}
    if tensors:
        file = stem + names.STATE_TENSORS
        files[file] = tensors
        data["tensors_file"] = file
    return Plan(_dumps(data), files)


def _unset(field: str, value: Any) -> bool:
    """Whether a TrainState field has its default (None; ``{}`` for config and extra)."""
    return value == {} if field in ("config", "extra") else value is None


def _dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2) + "\n").encode()


def write(directory: Path, stem: str, p: Plan) -> None:
    for file, tensors in p.files.items():
        safetensors_io.write_file(directory / file, tensors)
    safetensors_io.write_bytes(directory / (stem + names.STATE), p.state_json)
