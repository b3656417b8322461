"""A canonical checkpoint written as a DeepSpeed ZeRO-1/2/3 tag folder for any world size.

DeepSpeed's engine (``load_checkpoint``) loads what this writes, laid out as DeepSpeed lays
out its own:

- ZeRO-1/2 (``stage_1_and_2.py``): rank 0's model states (the module's state dict in the
  training dtype, the run state) and one optimizer file per rank: per parameter group, the
  trainable parameters' fp32 master weights end to end in the optimizer's order, padded
  with zeros to a multiple of ``2 * world_size`` and cut into equal partitions, one per
  rank (the last one saved without its padding); the Adam moments in the same layout, padded.
- ZeRO-3 (``stage3.py``): every parameter is cut into ``ceil(n / world_size)`` elements
  per rank (the last rank's piece padded with zeros); per sub-group (the parameters of a
  group, cut where they pass the config's ``sub_group_size`` partition elements) each rank's
  optimizer file holds its pieces end to end (``fp32_flat_groups``, and the moments alike),
  and each rank's model states hold the module with empty placeholders for parameters, the
  buffers whole, and its pieces of the frozen parameters.

DeepSpeed's classes in the pickles (``ZeroStageEnum``, ``LossScaler``,
``fragment_address``) are written by name, never imported.

Each file is one ``pool.run`` job (``--workers``): every rank's optimizer file, the model
states (ZeRO-3: every rank's), in the universal layout every parameter's folder; ``latest``
is written after them all.

Trainable parameters and their order come from the optimizer state's groups (those with
state: torch's optimizer lists frozen ones too). A checkpoint without Adam moments for
every one of them is refused unless ``optimizer=fresh`` (or a mapping of AdamW
hyper-parameters) asks for a new state: zero moments at step 0, which Adam treats as
torch's AdamW treats a parameter it has not stepped yet.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import attrs
from ckpt_core import dtypes, pool, torchfile
from ckpt_core.errors import LossyConversion, UsageError
from ckpt_core.model import Checkpoint, OptimizerState, TrainState
from ckpt_core.tensor import Tensor

from . import folder as layout
from . import pickles, universal, zero

DS_VERSION = "0.19.8"
DTYPES = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}
FLOATS = frozenset(DTYPES.values())  # widen exactly to the fp32 master weights
# DeepSpeed's classes, as (module, name): the ones its reader reads as stand-ins
ZERO_STAGE = tuple(pickles.ZERO_STAGE.rsplit(".", 1))
SCALER_MODULE = pickles.SCALERS[0].rsplit(".", 1)[0]
FRAGMENT = tuple(pickles.FRAGMENT.rsplit(".", 1))
SUB_GROUP_SIZE = 10 ** 9  # DeepSpeed's default zero_optimization.sub_group_size
# torch.optim.AdamW's defaults (torch 2.x), the hyper-parameters of a fresh state
ADAMW = {"lr": 0.001, "betas": (0.9, 0.999), "eps": 1e-08, "weight_decay": 0.01, "amsgrad": False,
         "maximize": False, "foreach": None, "capturable": False, "differentiable": False, "fused": None,
         "decoupled_weight_decay": True}


def write(ck: Checkpoint, path: Path, options: dict[str, Any]) -> None:
    facts = ck.layout.facts if ck.layout.format == "deepspeed" else {}
    ck = _with_optimizer(ck, options.get("optimizer"))
    ts = ck.train_state
    world = _int_option(options, "world_size", ts.extra.get("world_size") or 1)
    stage = _int_option(options, "stage", ts.extra.get("zero_stage") or 2)
    if stage not in (1, 2, 3):
        raise UsageError(f"--option stage={stage}: DeepSpeed's ZeRO stages are 1, 2 and 3")
    dtype = options.get("dtype", _config_dtype(ts.config))
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise UsageError(f"--option dtype={dtype!r}: use fp32, bf16 or fp16")
    as_universal = _flag(options, "universal")
    opt = ts.optimizer
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
    if stage in (1, 2) and not as_universal:
        _check_partitions(ck, groups, world)
    tag = facts.get("tag") or f"global_step{ts.step if ts.step is not None else 0}"
    folder = path / tag
    path.mkdir()
    folder.mkdir()
    trainable = {n for g in groups for n in g}
    prefix = "bf16_" if dtype == "bf16" else ""
    if as_universal:
        jobs = universal.jobs(folder, ck.tensors, groups, opt, _global_state(opt.extra, stage))
        states = _model_states(ck, groups, trainable, 1, dtype, stage, facts)
        states |= {"dp_world_size": world, "universal_checkpoint_info": universal.VERSION}
        # ZeRO-1/2 engines read the first name, ZeRO-3 ones the second
        jobs += [partial(torchfile.save, states, folder / name) for name in universal.MODEL_STATES]
    elif stage == 3:
        sub_groups, owners = _sub_groups(ck, groups, world, ts.config)
        jobs = [job for rank in range(world) for job in (
            partial(_save, folder / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", _zero3_optimizer_file,
                    ck, sub_groups, owners, world, rank),
            partial(_save, folder / layout.ZERO3_STATES.format(r=rank), _model_states, ck, sub_groups, trainable, world,
                    dtype, stage, facts, rank))]
    else:
        jobs = [partial(_save, folder / f"{prefix}zero_pp_rank_{rank}_mp_rank_00_optim_states.pt", _optimizer_file, ck,
                        groups, world, rank, stage) for rank in range(world)]
        jobs.append(partial(_save, folder / layout.MODEL_STATES, _model_states, ck, groups, trainable, world, dtype,
                            stage, facts))
    pool.run(jobs)
    if as_universal:
        (path / universal.LATEST).write_text(tag)
    (path / layout.LATEST).write_text(tag)


def _save(path: Path, build, *args) -> None:
    """Write what ``build(*args)`` makes to ``path``: one file's job, built in the job, so a
    worker holds one rank's state at a time."""
    torchfile.save(build(*args), path)


def _flag(options: dict, key: str) -> bool:
    value = options.get(key, False)
    if type(value) is not bool:
        raise UsageError(f"--option {key}={value!r}: true or false")
    return value


def _global_state(extra: dict, stage: int) -> dict:
    """The optimizer's scalar state as DeepSpeed saves it beside the partitions."""
    return {
        "loss_scaler": _scaler(extra.get("loss_scaler")),
        "dynamic_loss_scale": extra.get("dynamic_loss_scale", False),
        "overflow": extra.get("overflow", False),
        "zero_stage": torchfile.call(*ZERO_STAGE, stage),
        "ds_version": DS_VERSION,
        **({"clip_grad": extra["clip_grad"]} if "clip_grad" in extra else {}),
    }


def _with_optimizer(ck: Checkpoint, fresh: Any) -> Checkpoint:
    """``ck`` with a train state that has an optimizer state: its own, or with ``fresh``
    (``"fresh"`` or a mapping of AdamW hyper-parameters) a new one (zero moments, step 0)
    for every parameter it lists as trainable (every tensor when it lists none)."""
    ts = ck.train_state or TrainState()
    opt = ts.optimizer
    if fresh is None:
        if opt is None or not opt.groups or not all(isinstance(g.get("params"), list) for g in opt.groups):
            raise UsageError("writing DeepSpeed needs the optimizer state (Adam moments by parameter name, with its "
                             "param groups), which this checkpoint lacks: pass --option optimizer=fresh to start a new "
                             "one (zero moments, step 0, torch's AdamW hyper-parameters, or give them as "
                             "--option 'optimizer={lr: 0.01}'). Nothing was written.")
        return ck
    hyper = {} if fresh == "fresh" else fresh
    if not isinstance(hyper, dict) or not set(hyper) <= set(ADAMW):
        raise UsageError(f"--option optimizer={fresh!r}: use fresh, or a mapping of AdamW hyper-parameters "
                         f"({', '.join(ADAMW)})")
    if opt is not None and opt.param_state:
        raise UsageError("--option optimizer: this checkpoint has an optimizer state, which a fresh one would drop; "
                         "leave the option out to write it. Nothing was written.")
    names = list(ck.trainable) if ck.trainable is not None else module_order(ck)
    step = Tensor.from_bytes(bytes(4), "F32", ())
    state = {n: {"step": step, "exp_avg": _zeros(ck.tensors[n].shape), "exp_avg_sq": _zeros(ck.tensors[n].shape)}
             for n in names}
    fresh_opt = OptimizerState("adamw", state, [{**ADAMW, **hyper, "params": names}])
    return ck.evolve(train_state=attrs.evolve(ts, optimizer=fresh_opt))


def module_order(ck: Checkpoint) -> list[str]:
    """The tensors in the order of the module's ``parameters()``, which DeepSpeed's flat
    partitions follow and no weights file records: the family schema's order (its rules
    list a module's tensors as the model defines them, layer by layer), else the
    checkpoint's own (a torch state dict's order is the module's)."""
    from ckpt_core.plugins import registry

    schema = registry().families.get(ck.arch.family)
    if schema is None:
        return list(ck.tensors)
    first_layer = next((k for k, rule in enumerate(schema.tensors) if "{i}" in rule.pattern), len(schema.tensors))
    keys = {}
    for name in ck.tensors:
        found = schema.rule_for(name)
        if found is None:
            raise UsageError(f"{name} is not a tensor of the {ck.arch.family} family, so its place in the module's "
                             "parameter order (which DeepSpeed's partitions follow) is unknown: a fresh optimizer "
                             "state needs a checkpoint of a known family. Nothing was written.")
        rule, layer = found
        k = schema.tensors.index(rule)
        keys[name] = (1, layer, k) if layer is not None else (0 if k < first_layer else 2, 0, k)
    return sorted(ck.tensors, key=keys.__getitem__)


def _zeros(shape: tuple[int, ...]) -> Tensor:
    return Tensor.from_loader("F32", shape, lambda: bytes(4 * math.prod(shape)))


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


def _check_partitions(ck: Checkpoint, groups: list[list[str]], world: int) -> None:
    """UsageError where a group is too small for ``world`` ranks: ZeRO-1/2 pad the last rank
    alone, so every other rank must be full and the last hold part of the group."""
    for names in groups:
        total = sum(ck.tensors[n].numel for n in names)
        size, pad = _layout([ck.tensors[n].numel for n in names], world)
        if names and pad >= size:
            raise UsageError(f"--option world_size={world}: a parameter group of {total} elements leaves rank "
                             f"{world - 1} nothing but padding at ZeRO-1/2 (DeepSpeed pads the last rank alone); use fewer ranks "
                             "or --option stage=3. Nothing was written.")


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
            **_global_state(extra, stage),  # ZeRO-3 sources keep no clip_grad: then the engine keeps its configured one
            "base_optimizer_state": {"state": slots, "param_groups": [{**h, "params": [g]} for g, h in enumerate(hyper)]},
            "single_partition_of_fp32_groups": fp32,
            "group_paddings": paddings,
            "param_alignment_paddings": [[0] * len(names) for names in groups],
            "partition_count": [world] * len(groups),
            "param_slice_mappings": mappings,
        },
        "ds_config": ck.train_state.config,
        "ds_version": DS_VERSION,
    }


def _sub_groups(ck: Checkpoint, groups: list[list[str]], world: int, config: dict) -> tuple[list[list[str]], list[int]]:
    """ZeRO-3's sub-groups (``stage3.py`` ``_create_fp16_sub_groups``): a group's parameters
    in order, cut after the one whose partition elements reach ``sub_group_size``; and the
    group each sub-group belongs to."""
    zero_config = config.get("zero_optimization") if isinstance(config.get("zero_optimization"), dict) else {}
    limit = zero_config.get("sub_group_size", SUB_GROUP_SIZE)
    sub_groups, owners = [], []
    for g, names in enumerate(groups):
        parts = [-(-ck.tensors[n].numel // world) for n in names]
        if limit is None or limit >= sum(parts):
            cuts = [names]
        else:
            cuts, current, size = [], [], 0
            for n, part in zip(names, parts):
                current.append(n)
                size += part
                if size >= limit or n == names[-1]:
                    cuts.append(current)
                    current, size = [], 0
        sub_groups += cuts
        owners += [g] * len(cuts)
    return sub_groups, owners


def _piece(t: Tensor, world: int, rank: int) -> list[Tensor]:
    """Rank ``rank``'s ZeRO-3 piece of ``t``: ``ceil(n / world)`` elements, zero padded."""
    n = t.numel
    part = -(-n // world)
    lo, hi = min(n, rank * part), min(n, (rank + 1) * part)
    pieces = [t.reshape(n).slice(0, lo, hi)] if hi > lo else []
    if part > hi - lo:
        pieces.append(Tensor.from_bytes(bytes(t.nbytes // max(n, 1) * (part - (hi - lo))), t.dtype, (part - (hi - lo),)))
    return pieces


def _pieces(tensors: list[Tensor], world: int, rank: int) -> Tensor:
    """Rank ``rank``'s pieces of ``tensors``, end to end."""
    parts = [p for t in tensors for p in _piece(t, world, rank)]
    return parts[0] if len(parts) == 1 else Tensor.concat(parts)


def _zero3_optimizer_file(ck: Checkpoint, sub_groups: list[list[str]], owners: list[int], world: int, rank: int) -> dict:
    opt = ck.train_state.optimizer
    fp32, slots = [], {}
    for i, names in enumerate(sub_groups):
        fp32.append(_pieces([zero.widened(ck.tensors[n]) for n in names], world, rank))
        slot = {"step": opt.param_state[names[0]].get("step", Tensor.from_bytes(bytes(4), "F32", ()))}
        for key in zero.MOMENTS:
            slot[key] = _pieces([zero.widened(opt.param_state[n][key]) for n in names], world, rank)
        slots[i] = slot
    hyper = [{k: v for k, v in group.items() if k != "params"} for group in opt.groups]
    params = [[i for i, g in enumerate(owners) if g == owner] for owner in range(len(hyper))]
    extra = opt.extra
    return {
        "optimizer_state_dict": {
            **_global_state(extra, 3),
            "partition_count": world,
            "optimizer_state_dict": {"state": slots, "param_groups": [{**h, "params": p} for h, p in zip(hyper, params)]},
            "fp32_flat_groups": fp32,
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
                  stage: int, facts: dict, rank: int = 0) -> dict:
    """A rank's model states; ``groups``: the optimizer's parameter groups (ZeRO-3: its sub-groups)."""
    ts = ck.train_state
    buffers = [n for n in facts.get("buffer_names", ()) if n in ck.tensors]
    frozen = [n for n in ck.tensors if n not in trainable and n not in buffers]
    target = DTYPES[dtype]
    module = {}
    for name in ck.names():
        t = ck.tensor(name)
        if stage == 3 and name not in buffers:  # ZeRO-3 saves parameters as empty placeholders
            t = Tensor.from_bytes(b"", target, (0,))
        elif ck.ties.get(name, name) in trainable and t.dtype != target:
            t = module.get(ck.ties.get(name), None) or _cast(t, target)
        module[name] = t
    if stage == 3:
        fragments = {n: _pieces([ck.tensors[n]], world, rank) for n in frozen}
    else:
        fragments = {n: module[n] for n in frozen}
    extra = ts.extra
    config = dict(ts.config)
    config["zero_optimization"] = {**config.get("zero_optimization", {}), "stage": stage}
    return {
        "module": module,
        "buffer_names": buffers,
        "optimizer": None,
        "param_shapes": [{n: _size(ck.tensors[n]) for n in names} for names in groups],
        "frozen_param_shapes": {n: _size(ck.tensors[n]) for n in frozen},
        "shared_params": dict(ck.ties),
        "frozen_param_fragments": fragments,
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


def _size(t: Tensor) -> Any:
    """``torch.Size(shape)`` in the pickle, as DeepSpeed saves shapes (``zero_to_fp32.py`` calls ``.numel()``)."""
    return torchfile.call("torch", "Size", tuple(t.shape))


def _cast(t: Tensor, dtype: str) -> Tensor:
    """``t`` rounded to ``dtype`` (to nearest even, as torch's ``.to`` rounds)."""
    return Tensor.from_loader(dtype, t.shape, lambda: dtypes.from_float32(t.to_float32(), dtype))
