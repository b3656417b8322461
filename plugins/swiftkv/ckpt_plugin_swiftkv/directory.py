"""Reading and writing teacher (``hf``) and student (``swiftkv``) directories as canonical
checkpoints: config.json, tensors, ties, the student's plan, and the carried files.

Both formats keep the fields of config.json that are not derived, and the other files of
the directory, in ``extra`` under their own name; each writer also takes the other's
(a teacher's tokenizer goes with its student and back).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import Arch, Checkpoint, CorruptInput, LossyConversion, Tensor, UsageError, graph
from ckpt_core.model import Layout

from . import config as cfg
from . import hfdir, swiftkv
from .families import family_of_model_type

HF, SWIFTKV = "hf", "swiftkv"


def read(path: Path, fmt: str, options: dict[str, Any]) -> Checkpoint:
    """The checkpoint in teacher or student directory ``path`` (tensors lazy)."""
    config = hfdir.read_config(path)
    found = family_of_model_type(config.get("model_type"))
    if found is None:
        raise CorruptInput(f"{path / hfdir.CONFIG}: model_type {config.get('model_type')!r} is not llama, qwen2 or qwen3 "
                           "(or a *_swiftkv student of one)")
    tensors, kind, ignored, metadata = hfdir.open_weights(path)
    recorded = metadata.get(graph.LAYOUTS_KEY)
    earlier = graph.layouts_from_json(recorded, f"{path}: metadata {graph.LAYOUTS_KEY!r}") if recorded is not None else ()
    ties = dict(cfg.TIE) if (config.get("tie_word_embeddings") is True and cfg.LM_HEAD not in tensors
                             and cfg.EMBED in tensors) else {}
    params = cfg.params_from_config(config)
    plan, kv_sharing, trainable = None, {}, None
    if fmt == SWIFTKV:
        where = str(path / hfdir.CONFIG)
        plan = swiftkv.from_config(config, swiftkv.n_layer_of(tensors), where)
        swiftkv.check_structure(plan, tensors, str(path))
        asked = swiftkv.from_options(options, plan.n_layer)
        if asked is not None:
            swiftkv.check_matches(plan, asked)
        if plan.variant == "A":
            params = cfg.ordered({**params, "num_key_value_layers": plan.num_kv_layers, "key_value_group_size": plan.group_size})
        kv_sharing, trainable = plan.kv_sharing(), swiftkv.trainable(tensors)
    ck = Checkpoint(arch=Arch(found[0], params), tensors=tensors, ties=ties, kv_sharing=kv_sharing, trainable=trainable,
                    layout=Layout(fmt, plan.variant if plan else kind, {"weights": kind, **({"ignored": ignored} if ignored else {})},
                                  earlier))
    kept = {"config": cfg.carried(config, cfg.derived(ck, plan)), "files": hfdir.carried_files(path)}
    kept = {k: v for k, v in kept.items() if v}
    return ck.evolve(extra={fmt: kept} if kept else {})


def write(ck: Checkpoint, path: Path, fmt: str, options: dict[str, Any]) -> Checkpoint:
    """Write ``ck`` as a teacher or student directory at ``path``; return what was written.
    A teacher written as ``swiftkv`` becomes a student as the options ask, a student
    written as ``hf`` loses its SwiftKV parts only with ``drop_swiftkv``."""
    fields, files = _kept(ck, fmt)
    if ck.ties and ck.ties != cfg.TIE:
        raise LossyConversion(f"ties {ck.ties}: a Hugging Face directory can only tie {cfg.LM_HEAD} to {cfg.EMBED}. "
                              "Nothing was written.")
    if fmt == HF:
        ck, plan = swiftkv.drop_student(ck, swiftkv.flag(options, "drop_swiftkv")), None
    else:
        ck, plan = _student(ck, options)
    config = cfg.build(cfg.derived(ck, plan), fields, teacher=plan is None)
    recorded = graph.layouts_to_json(ck, fmt)  # the source's layouts, so converting back needs no options
    hfdir.write(path, ck.tensors, config, files, options.get("max_shard_size", "5GB"), {graph.LAYOUTS_KEY: recorded} if recorded else {})
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


def _kept(ck: Checkpoint, fmt: str) -> tuple[dict, dict]:
    """The carried config fields and files: this format's own, else the other one's."""
    other = SWIFTKV if fmt == HF else HF
    kept = ck.extra.get(fmt, ck.extra.get(other, {}))
    fields, files = (kept.get("config", {}), kept.get("files", {})) if isinstance(kept, dict) else (None, None)
    if not isinstance(fields, dict) or not isinstance(files, dict) or not all(
            isinstance(v, bytes) or (isinstance(v, Tensor) and v.dtype == "U8" and len(v.shape) == 1) for v in files.values()):
        raise CorruptInput(f"extra[{fmt!r}] must hold a config mapping and files (bytes or 1-d U8 tensors)")
    return fields, files

