"""A DeepSpeed tag folder as a canonical Checkpoint: weights, ties, training state.

Weights are the fp32 master weights by default (what ``zero_to_fp32.py`` gives: trainable
parameters from the optimizer partitions, frozen ones and buffers from the model states,
buffers widened from 16 bits to fp32 as that script does; unlike it, ZeRO-1's frozen
parameters too, which its files do not list as such and the script drops), or with ``weights=module`` the
module's own state dict in its own dtype (ZeRO 0/1/2 files hold it; ZeRO-3 files do not).
The optimizer's flat Adam moments are cut per parameter name the same way, so the
canonical optimizer state does not depend on the world size.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ckpt_core import graph
from ckpt_core.errors import CorruptInput, NotFound, UsageError
from ckpt_core.model import Checkpoint, Layout, OptimizerState, TrainState
from ckpt_core.schema import FamilySchema
from ckpt_core.tensor import Tensor

from . import folder as layout
from . import pickles, universal, zero

NAME = "deepspeed"
WEIGHTS = ("fp32", "module")
# Model-states keys DeepSpeed writes itself; any other top-level key is the client state.
DS_KEYS = frozenset({
    "module", "buffer_names", "optimizer", "param_shapes", "frozen_param_shapes", "frozen_param_fragments",
    "shared_params", "lr_scheduler", "data_sampler", "random_ltd", "sparse_tensor_module_names", "skipped_steps",
    "global_steps", "global_samples", "dp_world_size", "mp_world_size", "ds_config", "ds_version",
    "checkpoint_parallel_dimensions", "universal_checkpoint_info",
})
RNG_KEYS = {"torch": "torch_random_state", "numpy": "np_random_state", "python": "python_random_state"}
SCALAR_KEYS = ("loss_scaler", "dynamic_loss_scale", "overflow", "clip_grad")


@attrs.frozen
class Tag:
    """A tag folder as read: rank 0's model states, and per rank its optimizer state."""

    folder: Path
    states: dict
    optim: list[dict]  # per rank: the ``optimizer_state_dict`` of its optim file (empty: none)
    stage: int | None  # None: DeepSpeed's BF16_Optimizer (ZeRO-1 layout, no zero_stage)
    world: int
    universal: bool = False  # DeepSpeed's universal layout (zero/<param>/*.pt), no optimizer files


def open_tag(path: Path) -> Tag:
    """Read a save directory's latest tag folder, or a tag folder, checking every rank is there."""
    folder = layout.tag_folder(path)
    if folder is None:
        raise NotFound(f"{path}: not a DeepSpeed save directory or tag folder (no latest file, no {layout.MODEL_STATES})")
    states = _states(layout.model_states(folder))
    files = layout.rank_files(folder, "optim")
    if not files:
        config = states.get("ds_config")
        zero_config = config.get("zero_optimization") if isinstance(config, dict) else None
        stage = zero_config.get("stage") if isinstance(zero_config, dict) else None
        world = states.get("dp_world_size")
        return Tag(folder, states, [], stage if type(stage) is int else 0, world if type(world) is int and world > 0 else 1,
                   universal.is_universal(folder))
    optim = []
    for rank, f in files.items():
        top = pickles.load(f)
        inner = top.get("optimizer_state_dict") if isinstance(top, dict) else None
        if not isinstance(inner, dict):
            raise CorruptInput(f"{f}: not a DeepSpeed optimizer-states file (no optimizer_state_dict)")
        optim.append(inner)
    count = optim[0].get("partition_count")
    world = max(count) if isinstance(count, list) and count else count
    if type(world) is not int or world < 1:
        raise CorruptInput(f"{files[0]}: partition_count {count!r} is not a world size")
    missing = sorted(set(range(world)) - set(files))
    if missing:
        raise NotFound(f"{folder}: no optimizer file for rank {missing[0]} of {world} (an interrupted save?)")
    if len(files) != world or states.get("dp_world_size", world) != world:
        raise CorruptInput(f"{folder}: {len(files)} optimizer files, partition_count {world}, dp_world_size "
                           f"{states.get('dp_world_size')}: they must agree (files from different runs?)")
    stage = optim[0].get("zero_stage")
    if stage is None and "single_partition_of_fp32_groups" not in optim[0]:
        raise CorruptInput(f"{files[0]}: neither a ZeRO partition nor a BF16_Optimizer state")
    if stage is not None and (type(stage) is not int or not 1 <= stage <= 3):
        raise CorruptInput(f"{files[0]}: zero_stage {stage!r} is not 1, 2 or 3")
    return Tag(folder, states, optim, stage, world)


def _states(path: Path) -> dict:
    states = pickles.load(path)
    if not isinstance(states, dict):
        raise CorruptInput(f"{path}: not a DeepSpeed model-states dict")
    return states


def read(path: Path, options: dict[str, Any], families: Mapping[str, FamilySchema]) -> Checkpoint:
    tag = open_tag(path)
    weights = options.get("weights", "fp32" if tag.optim or tag.universal else "module")
    if weights not in WEIGHTS:
        raise UsageError(f"--option weights={weights}: use fp32 (the master weights, as zero_to_fp32.py) or module")
    if not tag.optim and not tag.universal and tag.stage == 3:
        raise NotFound(f"{tag.folder}: ZeRO-3 keeps the weights only in the optimizer partition files "
                       "(*_optim_states.pt), and there are none")
    if weights == "module" or not (tag.optim or tag.universal):
        tensors = module_weights(tag)
    elif tag.universal:
        tensors = universal_checkpoint(tag)[0]
    else:
        tensors = master_weights(tag)
    shared = {**(_second_names(_module(tag)) if tag.stage != 3 else {}), **(tag.states.get("shared_params") or {})}
    ties = {alias: owner for alias, owner in shared.items() if owner in tensors}
    tensors = {n: t for n, t in tensors.items() if n not in ties}
    ts = train_state(tag)
    # what training updates: the parameters with optimizer state (not frozen ones, not buffers)
    trainable = tuple(n for n in tensors if n in ts.optimizer.param_state) if ts.optimizer else None
    params = options.get("params") or {}
    if not isinstance(params, dict):
        raise UsageError(f"--option params must be a mapping such as {{'n_head': 32}}, not {params!r}")
    arch = graph.recognised_arch(tensors, families)
    return Checkpoint(
        arch=attrs.evolve(arch, params={**arch.params, **params}), tensors=tensors, ties=ties, train_state=ts, trainable=trainable,
        layout=Layout(NAME, _variant(tag), {"tag": tag.folder.name, "weights": weights,
                                            "buffer_names": list(tag.states.get("buffer_names") or ())}),
    )


def _variant(tag: Tag) -> str:
    return "universal" if tag.universal else "bf16_optimizer" if tag.stage is None else f"zero{tag.stage}"


def universal_checkpoint(tag: Tag) -> tuple[dict[str, Tensor], OptimizerState]:
    """A universal checkpoint's tensors, in the module's order where the model states keep
    a module, and its optimizer state."""
    frozen = tag.states.get("frozen_param_shapes") or {}
    if not isinstance(frozen, dict):
        raise CorruptInput(f"{tag.folder}: frozen_param_shapes is not a mapping of names to shapes")
    tensors, opt = universal.read(tag.folder, tag.states, _param_shapes(tag.states, tag.folder), frozen)
    module = tag.states.get("module") if isinstance(tag.states.get("module"), dict) else {}
    order = [n for n in module if n in tensors] + [n for n in tensors if n not in module]
    return {n: tensors[n] for n in order}, attrs.evolve(opt, extra={**opt.extra, "zero_stage": tag.stage,
                                                                    "world_size": tag.world})


def _module(tag: Tag) -> dict[str, Tensor]:
    module = tag.states.get("module")
    if not isinstance(module, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in module.items()):
        raise CorruptInput(f"{tag.folder}: the model states' module is not a mapping of names to tensors")
    return module


def module_weights(tag: Tag) -> dict[str, Tensor]:
    """The module's own state dict (ZeRO 0/1/2 keep it whole in the model states)."""
    if tag.stage == 3:
        raise UsageError(f"{tag.folder}: ZeRO-3 files hold no module weights (only placeholders); read the fp32 master "
                         "weights instead (--option weights=fp32, the default)")
    module = _module(tag)
    if not module:
        raise NotFound(f"{layout.model_states(tag.folder)}: the module state dict is empty")
    return dict(module)


def master_weights(tag: Tag) -> dict[str, Tensor]:
    """Every parameter's fp32 master weight rebuilt from the partitions, frozen parameters
    and buffers from the model states, in the module's order."""
    where = tag.folder
    module, states = _module(tag), tag.states
    shapes = _param_shapes(states, where)
    flats = _flats(tag)
    pieces = _pieces(tag, shapes, flats)
    found: dict[str, Tensor] = {}
    buffers = set(states.get("buffer_names") or ())
    for name in buffers & set(module):
        found[name] = zero.widened(module[name])  # as zero_to_fp32.py returns buffers
    frozen = states.get("frozen_param_shapes") or {}
    if tag.stage == 3:  # every rank's model states (each loads on its rank): its frozen fragments
        models = layout.rank_files(tag.folder, "model")
        missing = sorted(set(range(tag.world)) - set(models))
        if missing:
            raise NotFound(f"{where}: no model-states file for rank {missing[0]} of {tag.world} (an interrupted save?)")
        fragments = [_states(models[r]).get("frozen_param_fragments") for r in range(tag.world)]
        found.update(zero.split_frozen(fragments, frozen, where))
    else:
        fragments = states.get("frozen_param_fragments") or {}
        for name in frozen:
            if not isinstance(fragments.get(name), Tensor):
                raise CorruptInput(f"{where}: frozen parameter {name} is missing from frozen_param_fragments")
            found[name] = fragments[name]
    for group in shapes:
        for name, shape in group.items():
            found[name] = zero.assemble(pieces[name], flats, shape)
    if tag.stage != 3:  # ZeRO-1 lists no frozen parameters (zero_to_fp32.py drops them): the module has them
        aliases = states.get("shared_params") or {}
        found.update((n, t) for n, t in module.items() if n not in found and n not in aliases)
    order = [n for n in module if n in found] + [n for n in found if n not in module]
    return {n: found[n] for n in order}


def _second_names(module: dict[str, Tensor]) -> dict[str, str]:
    """Alias -> first name, for module entries over the same bytes of the file (a tie:
    DeepSpeed lists them in ``shared_params`` only under ZeRO)."""
    first: dict[Any, str] = {}
    aliases = {}
    for name, t in module.items():
        key = (t.file_range, t.dtype, t.shape) if t.file_range is not None and t.numel else id(t)
        if key in first:
            aliases[name] = first[key]
        else:
            first[key] = name
    return aliases


def _param_shapes(states: dict, where: Path) -> list[dict[str, tuple[int, ...]]]:
    shapes = states.get("param_shapes")
    if not isinstance(shapes, list) or not all(isinstance(g, dict) for g in shapes):
        raise CorruptInput(f"{where}: param_shapes is not a list of name -> shape per parameter group")
    for g in shapes:
        for name, shape in g.items():
            if not isinstance(name, str) or not isinstance(shape, tuple) or not all(type(n) is int and n >= 0 for n in shape):
                raise CorruptInput(f"{where}: param_shapes has {name!r}: {shape!r}, not a name and a shape")
    return shapes


def _flats(tag: Tag) -> list[list[Tensor]]:
    """Per rank, per group: the flat fp32 partition."""
    key = "fp32_flat_groups" if tag.stage == 3 else "single_partition_of_fp32_groups"
    flats = []
    for rank, inner in enumerate(tag.optim):
        groups = inner.get(key)
        if not isinstance(groups, list) or not all(isinstance(t, Tensor) and len(t.shape) == 1 for t in groups):
            raise CorruptInput(f"{tag.folder}: rank {rank}'s optimizer file has no {key} (flat tensors per group)")
        flats.append(groups)
    if len({len(g) for g in flats}) != 1:
        raise CorruptInput(f"{tag.folder}: the ranks' optimizer files hold different numbers of parameter groups")
    return flats


def _pieces(tag: Tag, shapes: list[dict], flats: list[list[Tensor]]) -> dict[str, list[zero.Piece]]:
    lengths = [[t.shape[0] for t in groups] for groups in flats]
    if tag.stage == 3:
        return zero.zero3_pieces(shapes, lengths, tag.world, tag.folder)
    if len(shapes) != len(flats[0]):
        raise CorruptInput(f"{tag.folder}: {len(shapes)} parameter groups in param_shapes, {len(flats[0])} partitions")
    return zero.zero12_pieces(shapes, lengths, tag.world, tag.optim[0].get("param_alignment_paddings"), tag.folder)


# -- training state ---------------------------------------------------------------------------


def train_state(tag: Tag) -> TrainState:
    """Step, samples, scheduler, RNG, client state and the optimizer state by parameter name."""
    states = tag.states
    step, epoch = layout.step_of(tag.folder.name)
    steps = states.get("global_steps")
    ds_config = states.get("ds_config") if isinstance(states.get("ds_config"), dict) else {}
    rng = {key: states[name] for key, name in RNG_KEYS.items() if name in states}
    client = {k: v for k, v in states.items() if k not in DS_KEYS and k not in RNG_KEYS.values()}
    return TrainState(
        step=steps if type(steps) is int else step,
        epoch=epoch,
        optimizer=optimizer_state(tag) if tag.optim else universal_checkpoint(tag)[1] if tag.universal
        else stage0_optimizer(tag),
        scheduler=states.get("lr_scheduler"),
        rng=rng or None,
        config=ds_config,
        extra={
            "tag": tag.folder.name,
            "zero_stage": tag.stage,
            "world_size": tag.world,
            **{k: states[k] for k in ("global_samples", "skipped_steps", "dp_world_size", "mp_world_size", "ds_version",
                                      "data_sampler", "random_ltd") if k in states},
            "client_state": client,
        },
    )


def optimizer_state(tag: Tag) -> OptimizerState:
    """The base optimizer's state with its flat slots cut per parameter name."""
    shapes = _param_shapes(tag.states, tag.folder)
    flats = _flats(tag)
    pieces = _pieces(tag, shapes, flats)
    n_flat = len(flats[0])
    slots = [[_base_state(inner, tag, rank)["state"].get(i) for i in range(n_flat)] for rank, inner in enumerate(tag.optim)]
    if not all(isinstance(s, dict) for per_rank in slots for s in per_rank):
        raise CorruptInput(f"{tag.folder}: the optimizer state does not cover every partition in every rank's file")
    flat_keys = [k for k, v in slots[0][0].items() if isinstance(v, Tensor) and len(v.shape) == 1]
    moments = {key: [[_flat_slot(s, key, tag) for s in per_rank] for per_rank in slots] for key in flat_keys}
    param_state, groups = {}, []
    base_groups = _base_state(tag.optim[0], tag, 0).get("param_groups") or []
    owners = _owners(tag, base_groups, len(shapes))
    for g, group_shapes in enumerate(shapes):
        for name, shape in group_shapes.items():
            first = pieces[name][0].group if pieces[name] else 0
            param_state[name] = {key: zero.assemble(pieces[name], moments[key], shape) if key in moments else value
                                 for key, value in slots[0][first].items()}
        if g and owners[g] == owners[g - 1]:  # a ZeRO-3 sub-group of the group before
            groups[-1]["params"] += list(group_shapes)
            continue
        hyper = base_groups[owners[g]] if owners[g] < len(base_groups) else base_groups[0] if base_groups else {}
        groups.append({**{k: v for k, v in hyper.items() if k != "params"}, "params": list(group_shapes)})
    first_optim = tag.optim[0]
    kind = "adamw" if any(gr.get("decoupled_weight_decay") for gr in groups) else "adam" if any(
        "betas" in gr for gr in groups) else ""
    return OptimizerState(kind, param_state, groups, extra={
        "zero_stage": tag.stage, "world_size": tag.world, **{k: first_optim[k] for k in SCALAR_KEYS if k in first_optim}})


def _owners(tag: Tag, base_groups: list, n: int) -> list[int]:
    """The param group each of the ``n`` flat groups belongs to: itself, but under ZeRO-3
    a group's parameters may be cut into sub-groups, which its ``params`` list."""
    if tag.stage != 3 or not base_groups:
        return list(range(n))
    owner = {i: g for g, group in enumerate(base_groups) if isinstance(group, dict)
             for i in (group.get("params") or []) if type(i) is int}
    if sorted(owner) != list(range(n)):
        raise CorruptInput(f"{tag.folder}: the optimizer's param groups list sub-groups {sorted(owner)}, "
                           f"the partitions hold {n}")
    return [owner[i] for i in range(n)]


def stage0_optimizer(tag: Tag) -> OptimizerState | None:
    """Without ZeRO the model states hold the torch optimizer's ``state_dict``, keyed by
    position in ``module.parameters()`` order: the module's entries that are neither
    buffers nor a second name of one tensor (a tie), in order."""
    saved = tag.states.get("optimizer")
    if saved is None:
        return None
    module = _module(tag)
    aliases, buffers = _second_names(module), set(tag.states.get("buffer_names") or ())
    order = [n for n in module if n not in buffers and n not in aliases]
    try:
        groups = [{k: ([order[i] for i in v] if k == "params" else v) for k, v in g.items()} for g in saved["param_groups"]]
        param_state = {order[i]: dict(slots) for i, slots in saved["state"].items()}
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise CorruptInput(f"{tag.folder}: the model states' optimizer is not the torch optimizer state of its module "
                           f"({type(e).__name__}: {e})") from None
    kind = "adamw" if any(g.get("decoupled_weight_decay") for g in groups) else "adam" if any("betas" in g for g in groups) else ""
    return OptimizerState(kind, param_state, groups, extra={"zero_stage": 0, "world_size": tag.world})


def _base_state(inner: dict, tag: Tag, rank: int) -> dict:
    """A rank's base optimizer ``state_dict`` (state keyed by group index)."""
    base = inner.get("optimizer_state_dict" if tag.stage == 3 else "base_optimizer_state")
    if isinstance(base, list):  # an elastic checkpoint: one lean state per group, no param groups
        base = {"state": dict(enumerate(base)), "param_groups": []}
    if not isinstance(base, dict) or not isinstance(base.get("state"), dict):
        raise CorruptInput(f"{tag.folder}: rank {rank}'s optimizer file has no base optimizer state")
    return base


def _flat_slot(slot: dict, key: str, tag: Tag) -> Tensor:
    value = slot.get(key)
    if not isinstance(value, Tensor) or len(value.shape) != 1:
        raise CorruptInput(f"{tag.folder}: optimizer slot {key} is missing or not flat in some rank's file")
    return value
