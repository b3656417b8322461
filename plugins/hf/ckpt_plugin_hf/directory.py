"""Hugging Face model directories as canonical checkpoints: config.json, tensors, the tie,
and the carried files (tokenizer, generation config, chat template, README: every other
top-level file, byte for byte).

The format keeps the fields of config.json that are not derived, and the other files of
the directory, in ``extra["hf"]``. ``read`` and ``write`` take the format name so that a
format built on HF directories (a SwiftKV student) reads and writes them the same way
under its own name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import Arch, Checkpoint, CorruptInput, LossyConversion, Tensor, graph
from ckpt_core.model import Layout

from . import config as cfg
from . import gpt2, hfdir
from .families import MODEL_TYPES, family_of_model_type, own_schema

HF = "hf"


def read(path: Path, fmt: str = HF, family: str | None = None) -> Checkpoint:
    """The checkpoint in model directory ``path`` (tensors lazy), of the family its
    config's ``model_type`` names (or ``family``, for a caller that knows better)."""
    config = hfdir.read_config(path)
    family = family or family_of_model_type(config.get("model_type"))
    if family is None:
        raise CorruptInput(f"{path / hfdir.CONFIG}: model_type {config.get('model_type')!r} is not one of "
                           f"{', '.join(MODEL_TYPES)}")
    tensors, kind, ignored, metadata = hfdir.open_weights(path)
    recorded = metadata.get(graph.LAYOUTS_KEY)
    earlier = graph.layouts_from_json(recorded, f"{path}: metadata {graph.LAYOUTS_KEY!r}") if recorded is not None else ()
    params = cfg.params_from_config(config, family)
    if family == "gpt":
        tensors = gpt2.from_hf(tensors, metadata, str(path))
        params = cfg.ordered(gpt2.params(tensors, params, metadata, str(path)), family)
    tie = cfg.tie_of(family)
    head, table = next(iter(tie.items()))
    ties = dict(tie) if config.get("tie_word_embeddings", family == "gpt") is True and head not in tensors \
        and table in tensors else {}
    ck = Checkpoint(arch=Arch(family, params), tensors=tensors, ties=ties,
                    layout=Layout(fmt, kind, {"weights": kind, **({"ignored": ignored} if ignored else {})}, earlier))
    return with_kept(ck, fmt, config, cfg.derived(ck), path)


def with_kept(ck: Checkpoint, fmt: str, config: dict, derived: dict, path: Path) -> Checkpoint:
    """``ck`` keeping, in ``extra[fmt]``, the config fields ``derived`` does not give back
    and the directory's other files."""
    kept = {"config": cfg.carried(config, derived), "files": hfdir.carried_files(path)}
    kept = {k: v for k, v in kept.items() if v}
    return ck.evolve(extra={fmt: kept} if kept else {})


def write(ck: Checkpoint, path: Path, config: dict, files: dict, options: dict[str, Any], fmt: str = HF) -> None:
    """Write ``ck`` as a model directory at ``path`` with this ``config.json`` and carried
    ``files`` (GPT-2: Conv1D weights transposed, zero biases for a model without)."""
    tie = cfg.tie_of(ck.arch.family)
    if ck.ties and ck.ties != tie:
        raise LossyConversion(f"ties {ck.ties}: a Hugging Face directory can only tie {', '.join(tie)} to "
                              f"{', '.join(tie.values())}. Nothing was written.")
    tensors, metadata = ck.tensors, {}
    if ck.arch.family == "gpt":
        tensors, added = gpt2.to_hf(tensors)
        metadata = gpt2.metadata(added, ck.arch.params)
    recorded = graph.layouts_to_json(ck, fmt)  # the source's layouts, so converting back needs no options
    if recorded:
        metadata[graph.LAYOUTS_KEY] = recorded
    hfdir.write(path, tensors, config, files, options.get("max_shard_size", "5GB"), metadata)


def kept(ck: Checkpoint, fmt: str = HF, also: str | None = None) -> tuple[dict, dict]:
    """The carried config fields and files: ``fmt``'s own, else ``also``'s."""
    found = ck.extra.get(fmt, ck.extra.get(also, {}) if also else {})
    fields, files = (found.get("config", {}), found.get("files", {})) if isinstance(found, dict) else (None, None)
    if not isinstance(fields, dict) or not isinstance(files, dict) or not all(
            isinstance(v, bytes) or (isinstance(v, Tensor) and v.dtype == "U8" and len(v.shape) == 1) for v in files.values()):
        raise CorruptInput(f"extra[{fmt!r}] must hold a config mapping and files (bytes or 1-d U8 tensors)")
    return fields, files


def save(ck: Checkpoint, path: Path, options: dict[str, Any]) -> Checkpoint:
    """The ``hf`` writer: config.json derived from ``ck`` under its carried fields. Tensors
    other plugins add to a family (a SwiftKV student's) are refused: transformers' model of
    the family has no place for them."""
    foreign = [n for n in ck.tensors if own_schema(ck.arch.family).rule_for(n) is None]
    if foreign:
        raise LossyConversion(f"{foreign[0]}{f' and {len(foreign) - 1} more' if len(foreign) > 1 else ''}: not "
                              f"{ck.arch.family} tensors (another plugin's additions), which a Hugging Face directory "
                              "has no place for; convert to that plugin's format, or drop them with its options. "
                              "Nothing was written.")
    fields, files = kept(ck)
    write(ck, path, cfg.build(cfg.derived(ck), fields), files, options)
    return ck
