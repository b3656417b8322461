"""The ckpt-core hooks of ckpt-plugin-mlx: format ``mlx``, MLX step checkpoints.

    run/                                  a run directory (reads its latest complete step)
      step_000100.safetensors             weights: flat dotted MLX keys = canonical names
      step_000100_state.json              step, epoch, metrics, ... (format_version 1)
      step_000100_optimizer.safetensors   tree_flatten(optimizer.state)
      best/step_000050.safetensors ...    best-validation copies, same naming

or a single ``step_XXXXXX.safetensors`` (read with the companions beside it). Writing a
directory creates one step; writing a ``.safetensors`` path writes the weights alone.
Where each file's keys land in the canonical model:

    step_XXXXXX.safetensors            {name}          -> tensors[{name}]   (names kept as they are)
    step_XXXXXX_optimizer.safetensors  {param}.{slot}  -> train_state.optimizer.param_state[{param}][{slot}]
                                       {key}           -> train_state.optimizer.extra["state"][{key}]
    step_XXXXXX_state.json             fields          -> train_state fields
    step_XXXXXX_state.safetensors      {path}          -> tensors inside train_state fields
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_core import hookimpl, rundir, safetensors_io
from ckpt_core.errors import CkptError, CkptWarning, CorruptInput, LossyConversion, NotFound, UsageError
from ckpt_core.model import Checkpoint, Detection, FormatSpec, Layout, RunEntry
from ckpt_core.schema import FamilySchema

from . import names, run, statefile, weights

NAME = "mlx"

SPEC = FormatSpec(
    name=NAME,
    description="MLX step checkpoints: step_XXXXXX.safetensors with its _state.json and _optimizer.safetensors, or their run directory",
    capabilities=frozenset({"ties", "trainable", "train_state", "optimizer_state"}),
    dtypes=weights.DTYPES,
    patterns=("step_XXXXXX.safetensors", "step_XXXXXX_state.json", "step_XXXXXX_optimizer.safetensors", "best/"),
    options={"weights_only": "true: a .safetensors destination gets the weights alone, dropping the training state"},
    run_dirs=True,
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    try:
        return _detect(path)
    except (OSError, ValueError):
        return None


def _detect(path: Path) -> Detection | None:
    if path.is_dir():
        folders = [path, path / names.BEST]
        found = [n for f in folders if f.is_dir() for n in run.file_names(f) if names.ANY_FILE.fullmatch(n)]
        steps = [n for n in found if names.STEP_FILE.fullmatch(n)]
        if not found:
            return None
        return Detection(NAME, 0.9, f"MLX run directory: {len(steps)} step files", path)
    if not path.is_file() or path.suffix != names.WEIGHTS:
        return None
    named = names.step_of(path) is not None
    state = names.companion(path, names.STATE)
    try:
        _, metadata, _ = safetensors_io.read_header(path)
    except CkptError as e:
        if not named:
            return None
        return Detection(NAME, 0.3 if state.is_file() else 0.1, f"named like an MLX step file but unreadable: {e}", path)
    if metadata and weights.META_KEY in metadata:
        return Detection(NAME, 0.95, f"safetensors file with {weights.META_KEY} metadata", path)
    if not named:
        return None
    if state.is_file():
        return Detection(NAME, 0.95, f"MLX step file beside {state.name}", path)
    return Detection(NAME, 0.7, "named like an MLX step file (no state JSON beside it)", path)


# -- reading ---------------------------------------------------------------------------------


def _checkpoint_path(path: Path) -> Path:
    """The weights file to read: ``path`` itself, or a run directory's latest complete step."""
    if not path.is_dir():
        return path
    found = run.entries(path)
    if found is None:
        raise NotFound(f"{path}: no step_XXXXXX.safetensors or step_XXXXXX_state.json in it (not an MLX run directory)")
    ordered = rundir.ordered(found)
    complete = [e for e in ordered if e.complete]
    if not complete:
        run.check(ordered[-1].path)  # raises what is wrong with the newest
        raise CorruptInput(f"{path}: no complete checkpoint")
    chosen = complete[-1]
    skipped = [e for e in ordered if not e.complete and (e.step or 0) > (chosen.step or 0)]
    if skipped:
        warnings.warn(f"{path}: reading {chosen.path.name}; newer {skipped[-1].path.name} is incomplete ({skipped[-1].note})",
                      CkptWarning, stacklevel=2)
    return chosen.path


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]):
    if format != NAME:
        return None
    file = _checkpoint_path(path)
    tensors, g, metadata = weights.read(file, families)
    state = names.companion(file, names.STATE)
    ck = Checkpoint(
        arch=g.arch,
        tensors=tensors,
        ties=g.ties,
        trainable=g.trainable,
        train_state=statefile.read(state, file) if state.is_file() else None,
        layout=Layout(NAME, "run" if path.is_dir() else "file", {"metadata": metadata}, g.layouts),
    )
    ck.validate()
    return ck


@hookimpl
def train_state(path: Path, format: str):
    if format != NAME:
        return None
    file = _checkpoint_path(path)
    state = names.companion(file, names.STATE)
    return statefile.read(state, file) if state.is_file() else None


@hookimpl
def list_checkpoints(run_dir: Path, format: str) -> list[RunEntry] | None:
    if format != NAME:
        return None
    return run.entries(run_dir)


# -- writing ---------------------------------------------------------------------------------


@hookimpl
def from_canonical(checkpoint: Checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != NAME:
        return None
    own = checkpoint.layout.of(NAME)
    metadata = weights.metadata_for(checkpoint, own.facts.get("metadata", {}) if own else {}, NAME)
    ts = checkpoint.train_state
    if path.suffix == names.WEIGHTS:
        if ts is not None and options.get("weights_only") not in (True, "true"):
            raise LossyConversion(f"{path.name}: a single step file holds weights only, so the training state (step {ts.step}"
                                  f"{', optimizer' if ts.optimizer else ''}) would be lost; write a run directory (a destination "
                                  "without .safetensors) or pass --option weights_only=true. Nothing was written.")
        weights.write(path, checkpoint.tensors, metadata)
        return True
    if options.get("weights_only") in (True, "true"):
        raise UsageError("--option weights_only=true applies to a .safetensors destination; a run directory keeps the training state")
    step = ts.step if ts is not None and ts.step is not None else 0
    if step < 0:
        raise UsageError(f"step {step} cannot name a step file (steps are 0 or more)")
    stem = names.stem(step)
    plan = statefile.plan(ts, stem)  # refuses before anything is written
    path.mkdir()
    weights.write(path / (stem + names.WEIGHTS), checkpoint.tensors, metadata)
    statefile.write(path, stem, plan)
    return True
