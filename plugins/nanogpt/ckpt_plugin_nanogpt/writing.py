"""Writing canonical Checkpoints as nanoGPT and modded-nanogpt pickles, tensor by tensor.

The model goes back to the upstream keys by the layout's table (fusing q, k, v, o where
the layout fuses them) and the dict takes the upstream keys (``model_args``, ``iter_num``,
``best_val_loss``, ``config``, ``optimizer``; or ``step``, ``code``, ``optimizers``).
Whatever the upstream layout has no slot for but the checkpoint has (other hyper-parameters,
other training state, other formats' extras) goes under one ``ckpt_core`` key that the
upstream scripts ignore, so every round trip is exact. Tensors the layout cannot hold are
refused by name unless ``drop_unmapped`` is given.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ckpt_core import torchfile
from ckpt_core.compare import tree_differences
from ckpt_core.errors import CkptWarning, LossyConversion, UsageError
from ckpt_core.model import Checkpoint, TrainState

from . import crossing, layouts, params, trainstate
from .kinds import KINDS, PREFIX, Kind
from .reading import LEFTOVERS, untie

# TrainState fields with no upstream slot, and their empty values (not written when empty)
_NANOGPT_FIELDS = {"epoch": None, "metrics": {}, "scheduler": None, "rng": None, "data_position": None, "extra": {}}
_MODDED_FIELDS = {"best_metric": None, "config": {}, **_NANOGPT_FIELDS}


def flag(options: dict[str, Any], name: str) -> bool | None:
    """A boolean option's value (None when not given); UsageError for anything else."""
    value = options.get(name)
    if value is None or isinstance(value, bool):
        return value
    raise UsageError(f"option {name} takes true or false, not {value!r}")


def write(ck: Checkpoint, path: Path, fmt: str, options: dict[str, Any]) -> None:
    kind = KINDS[fmt]
    drop = bool(flag(options, "drop_unmapped"))
    ck, lost_optimizer = crossing.to_family(ck, kind.family, bool(flag(options, "fill_missing")), options.get("block_size"))
    named = {name: ck.tensor(name) for name in ck.names()}  # tied names share one Tensor object
    upstream, unmapped = layouts.backward(named, kind.table)
    lost = [f"{len(unmapped)} tensor(s): " + ", ".join(unmapped[:4]) + (f" and {len(unmapped) - 4} more" if len(unmapped) > 4 else "")
            ] if unmapped else []
    if lost_optimizer:
        lost.append("the optimizer state (keyed by parameters of another family)")
    if lost and not drop:
        raise LossyConversion(f"{fmt} has no slot for {'; '.join(lost)}; pass --option drop_unmapped=true to drop "
                              f"{'them' if len(lost) > 1 or unmapped else 'it'}. Nothing was written.")
    if lost:
        warnings.warn(f"dropped {'; '.join(lost)}: {fmt} has no slot for them", CkptWarning, stacklevel=2)
        named = {n: t for n, t in named.items() if n not in unmapped}
    shapes = {n: t.shape for n, t in named.items()}

    own = ck.layout.of(*KINDS)  # this plugin's layout, as the source was or as an earlier file recorded it
    prefix_flag = flag(options, "orig_mod_prefix")
    if prefix_flag is None:
        prefix = own.facts.get("prefix", "") if own else (PREFIX if kind.family == "modded-gpt" else "")
    else:
        prefix = PREFIX if prefix_flag else ""
    model = {prefix + key: t for key, t in upstream.items()}

    bare = flag(options, "bare")
    want_bare = bare if bare is not None else (own is not None and own.facts.get("variant") == "bare")
    top = _top(ck, kind, shapes, untie(named)[0], want_bare)
    if want_bare and top:
        if bare:
            raise LossyConversion(f"a bare state dict cannot hold {', '.join(top)}; leave out --option bare=true. "
                                  "Nothing was written.")
        want_bare = False
        top = _top(ck, kind, shapes, untie(named)[0], False)
    torchfile.save(model if want_bare else _ordered(top, model, kind), path)


def _top(ck: Checkpoint, kind: Kind, shapes: dict, stored: dict, bare: bool) -> dict:
    """The dict's entries beside ``model`` (empty: a bare state dict holds everything)."""
    leftovers: dict[str, Any] = {}
    margs: dict[str, Any] = {}
    if kind.family == "gpt":
        nanogpt = ck.layout.of("nanogpt")
        known = nanogpt.facts.get("model_args_keys") if nanogpt else None
        margs = params.model_args(ck.arch.params, known)
        found = params.gpt_params(shapes, None if bare else margs)
    else:
        found = params.modded_params(shapes, kind.layout)
    if tree_differences(found, ck.arch.params, "arch"):
        leftovers["arch"] = ck.arch.params
    if kind.family == "gpt":
        nanogpt = ck.layout.of("nanogpt")
        top = _nanogpt_top(ck, stored, margs, leftovers, nanogpt.facts.get("empty", {}) if nanogpt else {})
    else:
        top = _modded_top(ck, kind, leftovers)
    if bare:
        top.pop("model_args", None)
    if leftovers:
        top[LEFTOVERS] = leftovers
    return top


def _ordered(top: dict, model: dict, kind: Kind) -> dict:
    """The dict in the upstream key order, ``model`` in its place."""
    order = ("model", "optimizer", "model_args", "iter_num", "best_val_loss", "config") if kind.family == "gpt" \
        else ("step", "code", "model", "optimizers", "optimizer")
    out = {}
    for key in order:
        if key == "model":
            out["model"] = model
        elif key in top:
            out[key] = top[key]
    out.update((k, v) for k, v in top.items() if k not in out)
    return out


def _unstated(ts: TrainState, fields: dict[str, Any]) -> dict[str, Any]:
    """The TrainState fields among ``fields`` that hold something."""
    found = {}
    for name, empty in fields.items():
        value = getattr(ts, name)
        if not (value is None and empty is None) and not (isinstance(empty, dict) and isinstance(value, dict) and not value):
            found[name] = value
    return found


def _nanogpt_top(ck: Checkpoint, stored: dict, margs: dict, leftovers: dict, empty: dict) -> dict:
    """The nanoGPT dict's entries; ``empty``: the source's keys that held {} or None, written
    back as they were where the training state still has nothing for them."""
    top: dict[str, Any] = {"model_args": margs}
    ts = ck.train_state
    if ts is not None:
        stated = _unstated(ts, _NANOGPT_FIELDS)
        if ts.optimizer is not None:
            positional = trainstate.adamw_by_position(ts.optimizer, stored)
            if positional is None:
                stated["optimizer"] = trainstate.optimizer_as_tree(ts.optimizer)
            else:
                top["optimizer"] = positional
        if isinstance(ts.step, int) and not isinstance(ts.step, bool):
            top["iter_num"] = ts.step
        else:
            stated["step"] = ts.step
        if ts.best_metric is not None:
            top["best_val_loss"] = ts.best_metric
        if ts.config:
            top["config"] = ts.config
        if stated or "iter_num" not in top:
            leftovers["train_state"] = stated
    top.update((k, v) for k, v in empty.items() if k not in top)
    if ck.extra:
        leftovers["extra"] = ck.extra
    return top


def _modded_top(ck: Checkpoint, kind: Kind, leftovers: dict) -> dict:
    top: dict[str, Any] = {}
    ts = ck.train_state
    if ts is not None:
        stated = _unstated(ts, _MODDED_FIELDS)
        if isinstance(ts.step, int) and not isinstance(ts.step, bool):
            top["step"] = ts.step
        else:
            stated["step"] = ts.step
        opt = ts.optimizer
        if opt is not None:
            native = (opt.kind == "modded-nanogpt" and not opt.param_state and not opt.groups and not opt.resumable
                      and len(opt.extra) == 1 and next(iter(opt.extra)) in ("optimizers", "optimizer"))
            if native:
                top.update(opt.extra)
            else:
                stated["optimizer"] = trainstate.optimizer_as_tree(opt)
        if stated or "step" not in top:
            leftovers["train_state"] = stated
    extra = dict(ck.extra)
    own = extra.get(kind.format)
    if isinstance(own, dict) and list(own) == ["code"] and isinstance(own["code"], str):
        top["code"] = extra.pop(kind.format)["code"]
    if extra:
        leftovers["extra"] = extra
    return top
