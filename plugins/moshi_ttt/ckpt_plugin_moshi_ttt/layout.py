"""Where things are in a moshi fine-tuning run directory, and which checkpoints are complete.

    <run>/args.yaml
    <run>/checkpoints/checkpoint_{step:06d}/consolidated/   (written to tmp.consolidated/ first)
        consolidated.safetensors | lora.safetensors, config.json,
        training_config.json, optimizer_state.pt            (the TTT variant)

Checkpoints are ordered by the step in their folder name (never by file times). One is
complete when ``consolidated/`` holds exactly one weights file whose header is valid and
no ``tmp.consolidated/`` is left over from an interrupted save.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_core import CorruptInput, NotFound, RunEntry
from ckpt_core.safetensors_io import read_header

ARGS = "args.yaml"
CHECKPOINTS = "checkpoints"
CONSOLIDATED = "consolidated"
TMP = "tmp.consolidated"
FULL = "consolidated.safetensors"
LORA = "lora.safetensors"
CONFIG = "config.json"
TRAINING_CONFIG = "training_config.json"
OPTIMIZER = "optimizer_state.pt"
STEP = re.compile(r"checkpoint_(\d+)\Z")


def checkpoint_name(step: int) -> str:
    return f"checkpoint_{step:06d}"


def step_of(folder: Path) -> int | None:
    m = STEP.match(folder.name)
    return int(m.group(1)) if m else None


def kind(path: Path) -> str | None:
    """``run``, ``checkpoint`` or ``consolidated`` by what the directory holds; None if none."""
    if not path.is_dir():
        return None
    if (path / FULL).is_file() or (path / LORA).is_file():
        return "consolidated"
    if (path / CONSOLIDATED).is_dir() or (path / TMP).is_dir():
        return "checkpoint"
    if (path / CHECKPOINTS).is_dir() and any(step_of(p) is not None for p in (path / CHECKPOINTS).iterdir()):
        return "run"
    return None


def weights_file(consolidated: Path) -> Path:
    """The one weights file of a ``consolidated/`` folder."""
    found = [consolidated / n for n in (FULL, LORA) if (consolidated / n).is_file()]
    if len(found) > 1:
        raise CorruptInput(f"{consolidated}: holds both {FULL} and {LORA}; a checkpoint has exactly one weights file")
    if not found:
        raise NotFound(f"{consolidated}: no {FULL} or {LORA}")
    return found[0]


def entry(folder: Path) -> RunEntry:
    """A checkpoint folder as a RunEntry, complete or not (and why)."""
    step = step_of(folder)
    note = ""
    if (folder / TMP).exists():
        note = f"{TMP}/ left over: an interrupted save"
    else:
        try:
            read_header(weights_file(folder / CONSOLIDATED))
        except (CorruptInput, NotFound) as e:
            note = str(e)
    return RunEntry(path=folder, step=step, complete=not note, paths=(folder,), note=note)


def entries(run_dir: Path) -> list[RunEntry]:
    """Every ``checkpoint_XXXXXX`` folder of a run, by step."""
    folders = [p for p in (run_dir / CHECKPOINTS).iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted((entry(f) for f in folders), key=lambda e: e.step)


def pick(run_dir: Path, step: int | None) -> Path:
    """The checkpoint folder to read: the given step, or the latest complete one."""
    found = entries(run_dir)
    if step is not None:
        chosen = next((e for e in found if e.step == step), None)
        if chosen is None:
            raise NotFound(f"{run_dir}: no checkpoint at step {step} (steps: {', '.join(str(e.step) for e in found) or 'none'})")
        if not chosen.complete:
            raise CorruptInput(f"{chosen.path}: incomplete checkpoint ({chosen.note})")
        return chosen.path
    complete = [e for e in found if e.complete]
    if not complete:
        why = "; ".join(f"{e.path.name}: {e.note}" for e in found) or "no checkpoint folders"
        raise CorruptInput(f"{run_dir}: no complete checkpoint ({why})")
    return complete[-1].path
