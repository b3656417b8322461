"""A DCP directory as a canonical Checkpoint: model tensors, optimizer state, the rest.

Where each flat key came from is the metadata's ``planner_data`` path (the nested dict
``dcp.save`` was given), so names are never guessed from dots:

- ``("model", fqn)``: a model tensor named ``fqn`` (``get_state_dict``'s names, which for a
  transformers model are its own: ``model.layers.0...``, ``lm_head.weight``); a checkpoint
  saved flat (``dcp.save(model.state_dict())``) has paths ``(fqn,)`` instead.
- ``("optim", "state", fqn, slot)``: the optimizer's ``slot`` (``exp_avg``, ``exp_avg_sq``,
  ``step``) of parameter ``fqn``; ``("optim", "param_groups", i, key)``: group ``i``'s ``key``
  (``params`` holds parameter names).
- ``("ckpt_core",)``: what ckpt-core wrote and DCP has no place for (the family and its
  hyper-parameters, ties, KV sharing, the trainable set, the train state's step, epoch,
  ..., the optimizer's kind), one value.
- anything else (torchtitan's ``train_state``, ``dataloader``, ``lr_scheduler``, a model's
  non-tensor values): kept in the train state's ``extra`` at its path.

torchtitan's own Llama names (``tok_embeddings``, ``layers.N.attention.wq`` ...) become
transformers' when the head counts are known (``--option params``, or ckpt-core's own value),
``wq``/``wk`` and their moments permuted as torchtitan's ``convert_to_hf`` does
(``torchtitan.py``); the layout records it, so writing DCP again restores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from ckpt_core import (Arch, Checkpoint, CorruptInput, FamilySchema, Layout, OptimizerState, Tensor, TrainState,
                       UsageError)
from ckpt_core.graph import recognised_arch

from . import hfshards, metadata, torchtitan
from .items import Items

NAME = "dcp"
MODEL, OPTIM, OWN = "model", "optim", "ckpt_core"
EXTRA_AT_PATHS = "extra_at_paths"  # layout fact: the train state's extra entries that are DCP entries of their own
TRAIN_FIELDS = ("step", "epoch", "best_metric", "metrics", "scheduler", "rng", "data_position", "config")


def read(directory: Path, families: Mapping[str, FamilySchema], with_tensors: bool = True,
         params: dict[str, Any] | None = None) -> Checkpoint:
    """The checkpoint in ``directory`` (tensors lazy; with ``with_tensors`` False, only what
    the train state needs is read, for the ``train_state`` hook). ``params`` are
    hyper-parameters the user states, over those recognised from the tensors."""
    if not isinstance(params or {}, dict):
        raise UsageError(f"--option params must be a mapping such as {{'n_head': 32}}, not {params!r}")
    if not (directory / metadata.NAME).exists() and hfshards.shard_files(directory):
        tensors, variant, files = hfshards.read(directory)
        return Checkpoint(arch=_arch(tensors, None, params, families), tensors=tensors,
                          layout=Layout(NAME, variant, {"files": files}))
    entries = metadata.read(directory)
    items = Items(directory)
    prefixed = any(e.path[0] == MODEL and len(e.path) > 1 for e in entries)
    tensors: dict[str, Tensor] = {}
    param_state: dict[str, dict[str, Any]] = {}
    groups: dict[int, dict[str, Any]] = {}
    optim_extra: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for e in entries:
        path = e.path
        if _is_model(e, prefixed):
            if with_tensors:
                tensors[".".join(map(str, path[1:] if prefixed else path))] = items.tensor(e)
            continue
        value = items.tensor(e) if e.dtype is not None else items.value(e)
        if path[0] == OPTIM and len(path) == 4 and path[1] == "state":
            param_state.setdefault(str(path[2]), {})[str(path[3])] = value
        elif path[0] == OPTIM and len(path) == 4 and path[1] == "param_groups" and type(path[2]) is int:
            groups.setdefault(path[2], {})[str(path[3])] = value
        elif path[0] == OPTIM:
            _put(optim_extra, path[1:], value, directory)
        elif path == (OWN,):
            own = _own(value, directory)
        else:
            _put(extra, path, value, directory)
    if sorted(groups) != list(range(len(groups))):
        raise CorruptInput(f"{directory / metadata.NAME}: optimizer param groups {sorted(groups)} are not 0..{len(groups) - 1}")
    group_list = [groups[i] for i in range(len(groups))]
    ties = (own.get("ties") or {}) if with_tensors else {}
    known = {**((own.get("arch") or {}).get("params") or {}), **(params or {})}
    model_names = [".".join(map(str, e.path[1:] if prefixed else e.path)) for e in entries if _is_model(e, prefixed)]
    names = "torchtitan" if torchtitan.is_torchtitan(model_names) and "n_head" in known else None
    if names:
        counts = torchtitan.heads(known, str(directory))
        tensors, param_state, group_list, ties = torchtitan.mapped(tensors, param_state, group_list, ties, True, counts)
    optimizer = None
    stated = own.get("optimizer") or {}
    if param_state or groups or optim_extra or stated:
        kind = "adamw" if any("exp_avg_sq" in s for s in param_state.values()) else ""
        optimizer = OptimizerState(kind=stated.get("kind", kind), param_state=param_state,
                                   groups=group_list, resumable=stated.get("resumable", True),
                                   extra={**optim_extra, **stated.get("extra", {})})
    fields = own.get("train_state") or {}
    extra_at_paths = sorted(extra)
    extra = {**extra, **own.get("extra", {})}
    train_state = None
    if optimizer or extra or own.get("train_state") is not None:
        train_state = TrainState(**fields, optimizer=optimizer, extra=extra)
    files = sorted({c.storage.relative_path for e in entries for c in e.chunks})
    facts = {"files": files, EXTRA_AT_PATHS: extra_at_paths, **({torchtitan.FACT: names} if names else {})}
    layout = Layout(NAME, "prefixed" if prefixed else "flat", facts)
    arch = _arch(tensors, own.get("arch"), params, families)
    for alias, target in ties.items():
        if alias not in tensors or target not in tensors or \
                (tensors[alias].dtype, tensors[alias].shape) != (tensors[target].dtype, tensors[target].shape):
            raise CorruptInput(f"{directory / metadata.NAME}: tie {alias!r} -> {target!r} does not match the tensors stored")
        del tensors[alias]
    return Checkpoint(arch=arch, tensors=tensors, ties=dict(ties), kv_sharing=dict(own.get("kv_sharing") or {}),
                      trainable=own.get("trainable"), train_state=train_state, layout=layout)


def _is_model(e: metadata.Entry, prefixed: bool) -> bool:
    """Whether an entry is a model tensor (under ``model``, or at the top of a flat save)."""
    return e.dtype is not None and ((prefixed and e.path[0] == MODEL and len(e.path) > 1) or
                                    (not prefixed and len(e.path) == 1))


def _arch(tensors: dict[str, Tensor], stated: dict[str, Any] | None, params: dict[str, Any] | None,
          families: Mapping[str, FamilySchema]) -> Arch:
    """The family ckpt-core's writer stated, else the one the names fit; ``params`` over it."""
    arch = Arch(stated["family"], stated["params"]) if stated else recognised_arch(tensors, families)
    return attrs.evolve(arch, params={**arch.params, **(params or {})})


def _own(value: Any, directory: Path) -> dict[str, Any]:
    """The ``ckpt_core`` value ckpt-core's writer stores, checked field by field."""
    arch, opt, fields, extra = (value.get(k) if isinstance(value, dict) else None
                                for k in ("arch", "optimizer", "train_state", "extra"))
    ok = isinstance(value, dict) and (
        arch is None or (isinstance(arch, dict) and isinstance(arch.get("family"), str) and isinstance(arch.get("params"), dict))
    ) and (opt is None or (isinstance(opt, dict) and isinstance(opt.get("kind"), str)
                           and isinstance(opt.get("resumable"), bool) and isinstance(opt.get("extra"), dict))
    ) and (fields is None or (isinstance(fields, dict) and set(fields) <= set(TRAIN_FIELDS))
    ) and (extra is None or isinstance(extra, dict)) and all(
        isinstance(value.get(k), (dict, type(None))) for k in ("ties", "kv_sharing")
    ) and isinstance(value.get("trainable"), (tuple, type(None)))
    if not ok:
        raise CorruptInput(f"{directory / metadata.NAME}: the {OWN!r} value is not what ckpt-core writes there")
    return value


def _put(tree: dict[str, Any], path: tuple[Any, ...], value: Any, directory: Path) -> None:
    """Set ``value`` at ``path`` of a nested dict (keys as strings, as JSON-like state is)."""
    *parents, last = [str(p) for p in path]
    node = tree
    for p in parents:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise CorruptInput(f"{directory / metadata.NAME}: {'.'.join(map(str, path))} lies under a value")
    if last in node:
        raise CorruptInput(f"{directory / metadata.NAME}: {'.'.join(map(str, path))} is stored twice")
    node[last] = value
