"""A torch optimizer ``state_dict()`` (keyed by position) as an OptimizerState keyed by name.

torch numbers parameters 0, 1, 2, ... across the param groups; the fork's ``param_names``
(or nanoGPT's AdamW order, ``ckpt_core.gpt.adamw_param_order``) names each position.
Canonical names are the base tensors' names and ``<base>::lora_a`` / ``<base>::lora_b`` for
adapter matrices, each slot oriented as the canonical parameter is (a transposed upstream
matrix has its moments transposed too, exactly).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ckpt_core import OptimizerState, Tensor

KIND = "adamw"  # what the fork's (and nanoGPT's) training script uses


def positions(state_dict: dict) -> int:
    """How many parameters the optimizer state covers."""
    return sum(len(g.get("params", ())) for g in state_dict.get("param_groups", ()))


def read(state_dict: dict, names: list[str], canonical: Callable[[str], tuple[str, bool]]) -> OptimizerState:
    """``state_dict`` with position ``k`` named ``canonical(names[k])`` (name, transposed?)."""
    mapped = [canonical(n) for n in names]

    def slot(value: Any, transposed: bool) -> Any:
        if transposed and isinstance(value, Tensor) and len(value.shape) == 2:
            return value.T
        return value

    param_state = {}
    for pos, slots in state_dict.get("state", {}).items():
        name, transposed = mapped[pos]
        param_state[name] = {k: slot(v, transposed) for k, v in slots.items()}
    groups = []
    for g in state_dict.get("param_groups", []):
        groups.append({k: [mapped[p][0] for p in v] if k == "params" else v for k, v in g.items()})
    return OptimizerState(kind=KIND, param_state=param_state, groups=groups)


def write(opt: OptimizerState, upstream: Callable[[str], tuple[str, bool]]) -> tuple[dict, list[str]]:
    """The torch ``state_dict()`` of ``opt`` and the upstream parameter names by position."""
    order: list[str] = [n for g in opt.groups for n in g.get("params", [])]
    order += [n for n in opt.param_state if n not in order]
    index = {n: k for k, n in enumerate(order)}

    def slot(value: Any, transposed: bool) -> Any:
        if transposed and hasattr(value, "shape") and len(value.shape) == 2:
            return value.T
        return value

    state = {index[n]: {k: slot(v, upstream(n)[1]) for k, v in slots.items()} for n, slots in opt.param_state.items()}
    groups = [{k: [index[n] for n in v] if k == "params" else v for k, v in g.items()} for g in opt.groups]
    return {"state": state, "param_groups": groups}, [upstream(n)[0] for n in order]
