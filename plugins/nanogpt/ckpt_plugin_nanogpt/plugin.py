"""The ckpt-core hooks of ckpt-plugin-nanogpt: nanoGPT and modded-nanogpt checkpoints.

Formats: ``nanogpt`` (karpathy ``ckpt.pt``), ``modded-nanogpt`` (``state_step*.pt``, fused
``qkv_w``) and ``modded-nanogpt-medium`` (fused ``qkvo_w``), each also as a bare state dict.
Family ``modded-gpt`` is defined here; ``gpt`` ships with the core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import hookimpl
from ckpt_core.model import FormatSpec
from ckpt_core.torchfile import VERIFY_OPTION

from . import detection, reading
from .family import MODDED_GPT
from .kinds import KINDS

CAPABILITIES = frozenset({"ties", "train_state", "optimizer_state", "extra"})
WRITE_OPTIONS = {
    "orig_mod_prefix": "true/false: write keys with/without torch.compile's _orig_mod. prefix (default: as the source had them)",
    "bare": "true: write a bare state dict (torch.save(model.state_dict())) instead of the checkpoint dict",
    "drop_unmapped": "true: drop tensors and optimizer state the target layout has no slot for, instead of refusing",
    "fill_missing": "true: across families, create what the target model needs: to nanoGPT LayerNorm weights (1), wpe and "
                    "absent attention (0); to modded scalars (no skips, no x0 or value-embedding mix)",
    "block_size": "rows of the wpe that fill_missing creates (default: the checkpoint's block_size)",
}
MODEL_ONLY = {"model_only": "true: read only the model of a file whose optimizer state needs a script-defined class"}
READ_OPTIONS = {**VERIFY_OPTION}

SPECS = [
    FormatSpec("nanogpt", "karpathy/nanoGPT ckpt.pt (model, AdamW state, model_args, iter_num, ...) or a bare GPT state dict",
               families=("gpt", "modded-gpt"), capabilities=CAPABILITIES, patterns=("ckpt.pt", "*.pt"), options={**WRITE_OPTIONS, **READ_OPTIONS}),
    FormatSpec("modded-nanogpt", "modded-nanogpt state_step*.pt, qkv layout (qkv_w [3,H,C], c_proj, c_fc), or its bare state dict",
               families=("modded-gpt", "gpt"), capabilities=CAPABILITIES, patterns=("state_step*.pt",),
               options={**WRITE_OPTIONS, **MODEL_ONLY, **READ_OPTIONS}),
    FormatSpec("modded-nanogpt-medium", "modded-nanogpt medium state_step*.pt, qkvo layout (qkvo_w [4,H,C], fc_w, proj_w, lm_head_w)",
               families=("modded-gpt", "gpt"), capabilities=CAPABILITIES, patterns=("state_step*.pt",),
               options={**WRITE_OPTIONS, **MODEL_ONLY, **READ_OPTIONS}),
]


@hookimpl
def ckpt_formats():
    return SPECS


@hookimpl
def ckpt_families():
    return [MODDED_GPT]


@hookimpl
def detect(path: Path):
    try:
        return detection.detect(path)
    except Exception:  # detect never raises for a file that is not ours
        return None


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any]):
    if format not in KINDS:
        return None
    return reading.read(path, format, options)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format not in KINDS:
        return None
    from . import writing  # the writer's modules load only to write: start-up stays short

    writing.write(checkpoint, path, format, options)
    return True


@hookimpl
def train_state(path: Path, format: str):
    if format not in KINDS:
        return None
    return reading.read(path, format, {}).train_state
