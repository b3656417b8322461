"""File names of an MLX step checkpoint: the weights file and its companions beside it.

    step_000100.safetensors              weights, flat dotted keys
    step_000100_state.json               training state (step, epoch, metrics, ...)
    step_000100_optimizer.safetensors    optimizer.state, flattened the same way
    step_000100_state.safetensors        other tensors of the training state (rare)
"""

from __future__ import annotations

import re
from pathlib import Path

WEIGHTS = ".safetensors"
STATE = "_state.json"
OPTIMIZER = "_optimizer.safetensors"
STATE_TENSORS = "_state.safetensors"
COMPANIONS = (STATE, OPTIMIZER, STATE_TENSORS)

STEP_FILE = re.compile(r"step_(\d+)\.safetensors")
ANY_FILE = re.compile(r"(step_(\d+))(\.safetensors|_state\.json|_optimizer\.safetensors|_state\.safetensors)")
BEST = "best"


def stem(step: int) -> str:
    """``step_000100`` for step 100 (more digits past 999999)."""
    return f"step_{step:06d}"


def companion(weights: Path, suffix: str) -> Path:
    """The file beside ``weights`` that ends in ``suffix`` instead of ``.safetensors``."""
    return weights.with_name(weights.name.removesuffix(WEIGHTS) + suffix)


def step_of(path: Path) -> int | None:
    """The step number in a step file's name, or None."""
    m = STEP_FILE.fullmatch(path.name)
    return int(m.group(1)) if m else None
