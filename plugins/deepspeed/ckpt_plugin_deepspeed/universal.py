"""DeepSpeed's universal checkpoint: every parameter whole, by name, for any world size.

What ``deepspeed.checkpoint.ds_to_universal`` writes, and DeepSpeed's engine loads at any
data-parallel world size and ZeRO stage when its config says
``"checkpoint": {"load_universal": true}`` (it then reads the tag ``latest_universal`` names)::

    save_dir/
      latest_universal, latest          the tag
      global_step2/
        zero/<param>/fp32.pt            {"cat_dim": 0, "param": the fp32 master weight}
        zero/<param>/exp_avg.pt         the same for each Adam moment (exp_avg_sq.pt)
        zero/<param>/step.pt            the step, a 0-d tensor
        zero/<frozen or buffer>/fp32.pt {"param": the tensor}
        zero/optimizer_state.pt         the optimizer's hyper-parameters and scalar state
        mp_rank_00_model_states.pt      the run state, with universal_checkpoint_info
        zero_pp_rank_0_mp_rank_00_model_states.pt   the same, the name a ZeRO-3 engine loads

``optimizer_state.pt`` holds what both of DeepSpeed's loaders read: the ZeRO-1/2 one its
top-level ``param_groups``, ``clip_grad`` and ``ds_version``, the ZeRO-3 one its
``optimizer_state_dict`` (``param_groups`` and ``state[0]["step"]``). Reading takes the
same files, and also ``ds_to_universal``'s ZeRO-3 output, whose tensors are bare and flat.
``ds_to_universal`` copies the source's model-states files, so its output loads only at the
source's stage; ckpt-core writes both names, so that its output loads at any stage too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from ckpt_core import torchfile
from ckpt_core.errors import CorruptInput, NotFound
from ckpt_core.model import OptimizerState
from ckpt_core.tensor import Tensor

from . import pickles, zero

ZERO = "zero"
GLOBAL_STATE = "optimizer_state.pt"
LATEST = "latest_universal"
VERSION = {"universal_checkpoint_version": 0.4}  # deepspeed.checkpoint.constants
MODEL_STATES = ("mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_model_states.pt")
SCALARS = ("loss_scaler", "dynamic_loss_scale", "overflow", "clip_grad")


def is_universal(folder: Path) -> bool:
    return (folder / ZERO / GLOBAL_STATE).is_file()


def jobs(folder: Path, tensors: dict[str, Tensor], groups: list[list[str]], opt: OptimizerState,
         global_state: dict) -> list[Callable[[], None]]:
    """The ``zero/`` folder's writes, one ``pool.run`` job per parameter folder: ``tensors``
    (trainable ones: every name in ``groups``) with their moments and step, the others as
    ``fp32.pt`` alone; and ``optimizer_state.pt``, ``global_state`` (the loss scaler and
    other scalars) with the hyper-parameters."""
    zero_dir = folder / ZERO
    zero_dir.mkdir()
    trainable = {n for g in groups for n in g}
    out = [partial(_write_param, zero_dir / name, t, opt.param_state[name] if name in trainable else None)
           for name, t in tensors.items()]
    hyper = [{k: v for k, v in g.items() if k != "params"} for g in opt.groups]
    first = opt.param_state[groups[0][0]] if groups and groups[0] else {}
    out.append(partial(torchfile.save, {
        **global_state,
        "param_groups": [{**h, "params": [i]} for i, h in enumerate(hyper)],
        "optimizer_state_dict": {"state": {0: {"step": _step(first)}},
                                 "param_groups": [{**h, "params": [i]} for i, h in enumerate(hyper)]},
    }, zero_dir / GLOBAL_STATE))
    return out


def _write_param(where: Path, t: Tensor, slots: dict | None) -> None:
    """One parameter's folder: its fp32 master weight, moments and step (``slots``), or, for
    a frozen parameter or a buffer (no ``slots``), the tensor as it is (no optimizer keeps a
    master copy)."""
    where.mkdir()
    if slots is None:
        torchfile.save({"param": t}, where / "fp32.pt")
        return
    torchfile.save({"cat_dim": 0, "param": zero.widened(t)}, where / "fp32.pt")
    for key in zero.MOMENTS:
        torchfile.save({"cat_dim": 0, "param": zero.widened(slots[key])}, where / f"{key}.pt")
    torchfile.save(_step(slots), where / "step.pt")


def _step(slots: dict) -> Tensor:
    step = slots.get("step")
    return step if isinstance(step, Tensor) else Tensor.from_bytes(bytes(4), "F32", ())


def read(folder: Path, states: dict, shapes: list[dict], frozen: dict) -> tuple[dict[str, Tensor], OptimizerState]:
    """The tensors (trainable ones in ``shapes``' order, then ``frozen`` ones and the
    buffers) and the optimizer state by parameter name."""
    zero_dir = folder / ZERO
    tensors, param_state = {}, {}
    for group in shapes:
        for name, shape in group.items():
            tensors[name] = _tensor(zero_dir / name / "fp32.pt", shape)
            param_state[name] = {key: _tensor(zero_dir / name / f"{key}.pt", shape) for key in zero.MOMENTS}
            step = zero_dir / name / "step.pt"
            if step.is_file():
                param_state[name]["step"] = _tensor(step, ())
    for name in [*frozen, *(states.get("buffer_names") or ())]:
        if name not in tensors:
            shape = frozen.get(name)
            tensors[name] = _tensor(zero_dir / name / "fp32.pt", shape)
    global_state = pickles.load(zero_dir / GLOBAL_STATE)
    if not isinstance(global_state, dict):
        raise CorruptInput(f"{zero_dir / GLOBAL_STATE}: not DeepSpeed's universal optimizer state")
    inner = global_state.get("optimizer_state_dict") if isinstance(global_state.get("optimizer_state_dict"), dict) else {}
    hyper = global_state.get("param_groups") or inner.get("param_groups") or [{}]
    if not isinstance(hyper, list) or not all(isinstance(h, dict) for h in hyper):
        raise CorruptInput(f"{zero_dir / GLOBAL_STATE}: param_groups is not a list of mappings")
    state0 = (inner.get("state") or {}).get(0) if isinstance(inner.get("state"), dict) else None
    if isinstance(state0, dict) and isinstance(state0.get("step"), Tensor):  # ZeRO-3's: one step for all
        for slots in param_state.values():
            slots.setdefault("step", state0["step"])
    names = [list(g) for g in shapes]
    if len(hyper) != len(names):  # ZeRO-3 sub-groups of one param group
        names = [[n for g in names for n in g]]
    groups = [{**{k: v for k, v in h.items() if k != "params"}, "params": n} for h, n in zip(hyper, names)]
    kind = "adamw" if any(g.get("decoupled_weight_decay") for g in groups) else "adam" if any("betas" in g for g in groups) else ""
    extra = {k: global_state[k] for k in SCALARS if k in global_state}
    return tensors, OptimizerState(kind, param_state, groups, extra={"universal": True, **extra})


def _tensor(path: Path, shape: tuple[int, ...] | None) -> Tensor:
    """The tensor a universal file holds (``{"param": t}`` or, from ZeRO-3, ``t`` flat), shaped."""
    if not path.is_file():
        raise NotFound(f"{path}: missing from the universal checkpoint")
    value = pickles.load(path)
    t = value.get("param") if isinstance(value, dict) else value
    if not isinstance(t, Tensor):
        raise CorruptInput(f"{path}: holds no tensor (not a universal checkpoint file)")
    if shape is None or tuple(t.shape) == tuple(shape):
        return t
    if t.numel != math.prod(shape):
        raise CorruptInput(f"{path}: {list(t.shape)} does not hold a {list(shape)} parameter")
    return t.reshape(*shape)
