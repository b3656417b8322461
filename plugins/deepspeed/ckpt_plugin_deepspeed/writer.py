"""A canonical checkpoint written as a DeepSpeed ZeRO-1/2 tag folder for any world size.

DeepSpeed's engine (``load_checkpoint``) loads what this writes: rank 0's model states
(the module's state dict in the training dtype, the run state) and one optimizer file per
rank, laid out as DeepSpeed lays out its own (``stage_1_and_2.py``): per parameter group,
the trainable parameters' fp32 master weights end to end in the optimizer's order, padded
with zeros to a multiple of ``2 * world_size`` and cut into equal partitions, one per rank
(the last one saved without its padding); the Adam moments in the same layout, padded.
DeepSpeed's classes in the pickles (``ZeroStageEnum``, ``LossScaler``,
``fragment_address``) are written by name, never imported.

Trainable parameters and their order come from the optimizer state's groups (those with
state: torch's optimizer lists frozen ones too): a checkpoint without Adam moments for
every one of them is refused (nothing is invented).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ckpt_core import dtypes, torchfile
from ckpt_core.errors import LossyConversion, UsageError
from ckpt_core.model import Checkpoint
from ckpt_core.tensor import Tensor

from . import folder as layout
from . import pickles, zero

DS_VERSION = "0.19.8"
DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
FLOATS = frozenset(DTYPES.values())  # widen exactly to the fp32 master weights
# DeepSpeed's classes, as (module, name): the ones its reader reads as stand-ins
ZERO_STAGE = tuple(pickles.ZERO_STAGE.rsplit(".", 1))
SCALER_MODULE = pickles.SCALERS[0].rsplit(".", 1)[0]
FRAGMENT = tuple(pickles.FRAGMENT.rsplit(".", 1))


def write(ck: Checkpoint, path: Path, options: dict[str, Any]) -> None:
    facts = ck.layout.facts if ck.layout.format == "deepspeed" else {}
    ts = ck.train_state
    world = _int_option(options, "world_size", (ts.extra.get("world_size") if ts else None) or 1)
    stage = _int_option(options, "stage", (ts.extra.get("zero_stage") if ts else None) or 2)
    if stage not in (1, 2):
        raise UsageError(f"--option stage={stage}: this version writes ZeRO stage 1 or 2 (stage 3 is not written yet)")
    dtype = options.get("dtype", _config_dtype(ts.config if ts else {}))
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UsageError(f"--option dtype={dtype!r}: use fp32, bf16 or fp16")
    opt = ts.optimizer if ts is not None else None
    if opt is None or not opt.groups or not all(isinstance(g.get("params"), list) for g in opt.groups):
        raise UsageError("writing DeepSpeed needs the optimizer state (Adam moments by parameter name, with its param "
                         "groups), which this checkpoint lacks. Nothing was written.")
    # a parameter without any state never had a gradient (torch lists frozen ones too): not trainable
    groups = [[n for n in g["params"] if opt.param_state.get(n)] for g in opt.groups]
    for name in (n for g in groups for n in g):
        slots = opt.param_state.get(name, {})
        if name not in ck.tensors or not all(isinstance(slots.get(k), Tensor) for k in ("exp_avg", "exp_avg_sq")):
            raise UsageError(f"writing DeepSpeed needs {name}'s weight and Adam moments (exp_avg, exp_avg_sq); "
                             "this checkpoint lacks them. Nothing was written.")
        odd = [t.dtype for t in (ck.tensors[name], slots["exp_avg"], slots["exp_avg_sq"]) if t.dtype not in FLOATS]
        if odd:
            raise LossyConversion(f"{name} is {odd[0]}, and DeepSpeed keeps fp32 master weights and moments: pass "
                                  f"--cast {odd[0]}=F32 to round it. Nothing was written.")
    tag = facts.get("tag") or f"global_step{ts.step if ts.step is not None else 0}"
    folder = path / tag
    path.mkdir()
    folder.mkdir()
    trainable = {n for g in groups for n in g}
    for rank in range(world):
        state = _optimizer_file(ck, groups, world, rank, stage)
        prefix = "bf16_" if dtype == "bf16" else ""
        torchfile.save(state, folder / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    torchfile.save(_model_states(ck, groups, trainable, world, dtype, stage, facts), folder / layout.MODEL_STATES)
    (path / layout.LATEST).write_text(tag)


MAX_RANKS = 65536  # far beyond any data-parallel run: one file per rank is written


def _int_option(options: dict, key: str, default: int) -> int:
    value = options.get(key, default)
    if type(value) is not int or not 1 <= value <= MAX_RANKS:
        raise UsageError(f"--option {key}={value!r}: a positive integer, at most {MAX_RANKS}")
    return value


def _config_dtype(config: dict) -> str:
    for key in ("bf16", "fp16"):
        if isinstance(config.get(key), dict) and config[key].get("enabled"):
            return key
    return "fp32"


def _layout(numels: list[int], world: int) -> tuple[int, int]:
    """(partition size, padding of the last rank) of a group of ``numels`` on ``world`` ranks."""
    total = sum(numels)
    align = 2 * world
    padded = align * math.ceil(total / align)
    return padded // world, padded - total


def _partition(tensors: list[Tensor], world: int, rank: int, keep_padding: bool) -> Tensor:
    """Rank ``rank``'s slice of the group vector the flat ``tensors`` make, zero padded."""
    size, pad = _layout([t.numel for t in tensors], world)
    start, stop = rank * size, (rank + 1) * size
    parts, offset = [], 0
    for t in tensors:
        lo, hi = max(start, offset), min(stop, offset + t.numel)
        if lo < hi:
            parts.append(t.reshape(t.numel).slice(0, lo - offset, hi - offset))
        offset += t.numel
    if keep_padding and stop > offset:
        parts.append(Tensor.from_bytes(bytes(4 * (stop - max(offset, start))), "F32", (stop - max(offset, start),)))
    return parts[0] if len(parts) == 1 else Tensor.concat(parts)


def _optimizer_file(ck: Checkpoint, groups: list[list[str]], world: int, rank: int, stage: int) -> dict:
    opt = ck.train_state.optimizer
    fp32, slots, paddings, mappings = [], {}, [], []
    for g, names in enumerate(groups):
        weights = [zero.widened(ck.tensors[n]) for n in names]
        fp32.append(_partition(weights, world, rank, keep_padding=False))
        size, pad = _layout([t.numel for t in weights], world)
        paddings.append(pad if rank == world - 1 else 0)
        first = opt.param_state[names[0]]
        slot = {"step": first.get("step", Tensor.from_bytes(bytes(4), "F32", ()))}
        for key in ("exp_avg", "exp_avg_sq"):
            slot[key] = _partition([zero.widened(opt.param_state[n][key]) for n in names], world, rank, keep_padding=True)
        slots[g] = slot
        found, offset = {}, 0
        for n, t in zip(names, weights):
            lo, hi = max(rank * size, offset), min((rank + 1) * size, offset + t.numel)
            if lo < hi:
                found[n] = torchfile.Instance(*FRAGMENT, {"numel": hi - lo, "start": lo - rank * size})
            offset += t.numel
        mappings.append(found)
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in opt.groups]
    extra = opt.extra
    return {
        "optimizer_state_dict": {
            "loss_scaler": _scaler(extra.get("loss_scaler")),
            "dynamic_loss_scale": extra.get("dynamic_loss_scale", False),
            "overflow": extra.get("overflow", False),
            "base_optimizer_state": {"state": slots, "param_groups": [{**h, "params": [g]} for g, h in enumerate(hyper)]},
            "single_partition_of_fp32_groups": fp32,
            "zero_stage": torchfile.call(*ZERO_STAGE, stage),
            "group_paddings": paddings,
            "param_alignment_paddings": [[0] * len(names) for names in groups],
            "partition_count": [world] * len(groups),
            "ds_version": DS_VERSION,
            "param_slice_mappings": mappings,
            # ZeRO-3 files keep no clip_grad: then the engine keeps its configured one
            **({"clip_grad": extra["clip_grad"]} if "clip_grad" in extra else {}),
        },
        "ds_config": ck.train_state.config,
        "ds_version": DS_VERSION,
    }


def _scaler(read: Any) -> torchfile.Instance:
    """The loss scaler as the source had it (a DynamicLossScaler keeps its scale and
    counters), or a static one of scale 1."""
    if not isinstance(read, dict) or read.get("class") not in ("LossScaler", "DynamicLossScaler"):
        return torchfile.Instance(SCALER_MODULE, "LossScaler", {"cur_scale": 1.0, "dynamic": False})
    state = {k: v for k, v in read.items() if k != "class"}
    if isinstance(state.get("dtype"), str):
        state["dtype"] = torchfile.torch_dtype(state["dtype"])
    return torchfile.Instance(SCALER_MODULE, read["class"], state)


def _model_states(ck: Checkpoint, groups: list[list[str]], trainable: set[str], world: int, dtype: str,
                  stage: int, facts: dict) -> dict:
    ts = ck.train_state
    buffers = [n for n in facts.get("buffer_names", ()) if n in ck.tensors]
    frozen = [n for n in ck.tensors if n not in trainable and n not in buffers]
    target = DTYPES[dtype]
    module = {}
    for name in ck.names():
        t = ck.tensor(name)
        if ck.ties.get(name, name) in trainable and t.dtype != target:
            t = module.get(ck.ties.get(name), None) or _cast(t, target)
        module[name] = t
    extra = ts.extra
    config = dict(ts.config)
    config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": stage}
    return {
        "module": module,
        "buffer_names": buffers,
        "optimizer": None,
        "param_shapes": [{n: tuple(ck.tensors[n].shape) for n in names} for names in groups],
        "frozen_param_shapes": {n: tuple(ck.tensors[n].shape) for n in frozen},
        "shared_params": dict(ck.ties),
        "frozen_param_fragments": {n: module[n] for n in frozen},
        "lr_scheduler": ts.scheduler,
        "data_sampler": extra.get("data_sampler"),
        "random_ltd": extra.get("random_ltd"),
        "skipped_steps": extra.get("skipped_steps", 0),
        "global_steps": ts.step or 0,
        "global_samples": extra.get("global_samples", 0),
        "dp_world_size": world,
        "mp_world_size": 1,
        "ds_config": config,
        "ds_version": DS_VERSION,
        **(extra.get("client_state") or {}),
    }


def _cast(t: Tensor, dtype: str) -> Tensor:
    """``t`` rounded to ``dtype`` (to nearest even, as torch's ``.to`` rounds)."""
    return Tensor.from_loader(dtype, t.shape, lambda: dtypes.from_float32(t.to_float32(), dtype))
