"""Reading and writing SwiftKV student directories (HF directories, through
ckpt-plugin-hf's public face) as canonical checkpoints: the student's plan, its KV
sharing and trainable set, and the teacher's config fields and carried files.

A student keeps its config fields and files in ``extra["swiftkv"]``; the writer also takes
a teacher's (``extra["hf"]``: the tokenizer goes with the student and back). Read with
``drop_swiftkv``, a student is its teacher: what ``--to hf`` then writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import ckpt_plugin_hf as hf
from ckpt_core import Arch, Checkpoint, CorruptInput, LossyConversion, UsageError

from . import config as cfg
from . import swiftkv
from .families import family_of_model_type

SWIFTKV = "swiftkv"


def read(path: Path, options: dict[str, Any]) -> Checkpoint:
    """The student in directory ``path`` (tensors lazy); its teacher with ``drop_swiftkv``."""
    config = hf.read_config(path)
    found = family_of_model_type(config.get("model_type"))
    if found is None:
        raise CorruptInput(f"{path / hf.CONFIG}: model_type {config.get('model_type')!r} is not llama, qwen2 or qwen3 "
                           "(or a *_swiftkv student of one)")
    family = found[0]
    ck = hf.read(path, SWIFTKV, family)
    where = str(path / hf.CONFIG)
    plan = swiftkv.from_config(config, swiftkv.n_layer_of(ck.tensors), where)
    swiftkv.check_structure(plan, ck.tensors, str(path))
    asked = swiftkv.from_options(options, plan.n_layer)
    if asked is not None:
        swiftkv.check_matches(plan, asked)
    params = dict(ck.arch.params)
    if plan.variant == "A":
        params.update(num_key_value_layers=plan.num_kv_layers, key_value_group_size=plan.group_size)
    ck = ck.evolve(arch=Arch(family, cfg.ordered(params, family)), kv_sharing=plan.kv_sharing(),
                   trainable=swiftkv.trainable(ck.tensors), layout=attrs.evolve(ck.layout, variant=plan.variant))
    if swiftkv.flag(options, "drop_swiftkv"):
        teacher = swiftkv.drop_student(ck, True)
        return hf.with_kept(teacher, hf.HF, cfg.teacher_config(config), hf.derived(teacher), path)
    return hf.with_kept(ck, SWIFTKV, config, cfg.derived(ck, plan), path)


def write(ck: Checkpoint, path: Path, options: dict[str, Any]) -> Checkpoint:
    """Write ``ck`` as a student directory at ``path``; return what was written. A
    teacher becomes a student as the options ask."""
    fields, files = hf.kept(ck, SWIFTKV, also=hf.HF)
    ck, plan = _student(ck, options)
    hf.write(ck, path, hf.build(cfg.derived(ck, plan), fields), files, options, SWIFTKV)
    return ck


def _student(ck: Checkpoint, options: dict[str, Any]) -> tuple[Checkpoint, swiftkv.Plan]:
    """``ck`` as the student to write, and its plan: a teacher is initialised as asked,
    a student is checked against what is asked."""
    n_layer = swiftkv.n_layer_of(ck.tensors)
    asked = swiftkv.from_options(options, n_layer)
    own = swiftkv.from_checkpoint(ck, asked)
    if own is None:
        plan = asked or (swiftkv.Plan("B", n_layer, kv_map=dict(ck.kv_sharing)) if ck.kv_sharing else None)
        if plan is None:
            raise UsageError("a teacher becomes a SwiftKV student with --option kv_sharing_map={12: 11, ...} (variant B) "
                             "or --option num_key_value_layers=N [--option key_value_group_size=G] (variant A)")
        plan.check()
        if ck.kv_sharing and ck.kv_sharing != plan.kv_sharing():
            raise UsageError(f"the SwiftKV structure asked for ({plan.describe()}) does not match the checkpoint's own "
                             f"KV sharing map {ck.kv_sharing}")
        return swiftkv.init_student(ck, plan), plan
    if asked is not None:
        swiftkv.check_matches(own, asked)
    swiftkv.check_structure(own, ck.tensors, "the checkpoint")
    if ck.kv_sharing and ck.kv_sharing != own.kv_sharing():
        raise UsageError(f"the checkpoint's KV sharing map {ck.kv_sharing} does not match its SwiftKV structure "
                         f"(variant {own.variant}: {own.describe()}, sharing {own.kv_sharing()})")
    if ck.trainable is not None and set(ck.trainable) != set(swiftkv.trainable(ck.tensors)):
        raise LossyConversion("a SwiftKV directory's trainable set is its *_swiftkv tensors; this checkpoint's differs "
                              f"({len(ck.trainable)} tensors). Nothing was written.")
    return ck, own
