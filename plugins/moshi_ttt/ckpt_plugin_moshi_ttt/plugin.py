"""The ckpt-core hooks of ckpt-plugin-moshi-ttt: format ``moshi`` and family ``moshi``."""

from __future__ import annotations

from pathlib import Path

from ckpt_core import Detection, FormatSpec, hookimpl, jsonfile

from . import layout, reader, state, writer
from .family import MOSHI

NAME = reader.NAME

SPEC = FormatSpec(
    name=NAME,
    description="Moshi fine-tuning run directory, checkpoint_XXXXXX/ or consolidated/ folder (LoRA, TTT layers)",
    families=("moshi", "generic"),
    capabilities=frozenset({"ties", "adapters", "adapters_alone", "train_state", "optimizer_state"}),
    patterns=(layout.ARGS, "checkpoints/checkpoint_*/consolidated/", layout.FULL, layout.LORA, layout.CONFIG,
              layout.TRAINING_CONFIG, layout.OPTIMIZER),
    options={
        "step": "read this step of a run directory (default: the latest complete checkpoint)",
        "base": "PATH of the base model (a moshi checkpoint or model.safetensors) to complete a lora.safetensors",
        "weights": "write full (consolidated.safetensors) or lora (lora.safetensors); default: as the source",
        "layout": "write a run directory, a checkpoint folder or a consolidated folder (run, checkpoint, consolidated)",
        "naming": "write current (in_projs.{k}, default) or legacy (in_proj_weight, stacked) attention keys",
        "drop_frozen": "true: let weights=lora drop the frozen (non-trained) tensors",
        "init_state": "true: weights and config.json only (no optimizer, no run config), for init_state_dir",
    },
    run_dirs=True,
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def ckpt_families():
    return [MOSHI]


@hookimpl
def detect(path: Path):
    try:
        kind = layout.kind(path)
    except OSError:
        return None
    if kind is None:
        return None
    if kind == "consolidated":
        try:
            config = jsonfile.read_object(path / layout.CONFIG)
        except Exception:
            return Detection(NAME, 0.3, "a moshi weights file without a readable config.json", path)
        moshi = "dep_q" in config and "n_q" in config
        if not moshi:
            return Detection(NAME, 0.3, "named like a moshi consolidated/ folder, but config.json is not a moshi config", path)
        return Detection(NAME, 0.9, "moshi consolidated/ folder (config.json with n_q and dep_q)", path)
    reasons = {"checkpoint": "moshi checkpoint folder (consolidated/ or tmp.consolidated/ inside)",
               "run": "moshi run directory (checkpoints/checkpoint_XXXXXX/)"}
    return Detection(NAME, 0.85, reasons[kind], path)


@hookimpl
def to_canonical(path: Path, format: str, options):
    if format != NAME:
        return None
    return reader.read(path, options)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options):
    if format != NAME:
        return None
    writer.write(checkpoint, path, options)
    return True


@hookimpl
def train_state(path: Path, format: str):
    if format != NAME:
        return None
    found, consolidated, run_dir = reader.locate(path)
    return state.read(consolidated, layout.step_of(consolidated.parent) if found != "consolidated" else None, run_dir)


@hookimpl
def list_checkpoints(run_dir: Path, format: str):
    if format != NAME or layout.kind(run_dir) != "run":
        return None
    return layout.entries(run_dir)


@hookimpl
def run_retention(run_dir: Path, format: str):
    if format != NAME or layout.kind(run_dir) != "run":
        return None
    return state.retention(run_dir)
