"""mlx-lm model directories as canonical checkpoints, and back.

Names are kept as they are (mlx-lm's parameter names, which for Llama / Mistral / Qwen are
the Hugging Face names); the family is the installed schema the tensors fit
(``ckpt_core.graph``), with the hyper-parameters config.json states. A quantized
directory is read as it is stored: packed uint32 weights with their scales and biases,
the family ``generic`` and the ``quantization`` hyper-parameter, which only formats that
hold packed weights take; ``dequantize=true`` unpacks them while reading (``quantized``).

What a directory cannot say in config.json (a family's hyper-parameters beyond it, ties
other than the embedding's, KV sharing, the trainable set, earlier layouts) is written as
the core's graph JSON under the metadata key ``ckpt_core`` beside ``{"format": "mlx"}``;
mlx ignores it. The config fields and files beside the weights are ``extra["hf"]``, as
the ``hf`` format keeps them (see ``config``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_core import Arch, Checkpoint, CorruptInput, Layout, Tensor, UsageError, graph, jsonfile
from ckpt_core.model import QUANTIZATION
from ckpt_core.schema import FamilySchema

from . import config as cfg
from . import disk, quantized

NAME = "mlx-lm"
HF = "hf"  # the extra key of an HF-style directory's config fields and files
META_KEY = "ckpt_core"
FORMAT_METADATA = {"format": "mlx"}


def read(path: Path, options: dict[str, Any], families: Mapping[str, FamilySchema]) -> Checkpoint:
    """The checkpoint in model directory ``path`` (tensors lazy)."""
    config = jsonfile.read_object(path / disk.CONFIG)
    tensors, metadata = disk.read_weights(path)
    stored = metadata.pop(META_KEY, None)
    metadata.pop("format", None)
    if stored is not None:
        g = graph.from_json(stored, f"{path}: metadata {META_KEY!r}")
        params = {k: v for k, v in g.arch.params.items() if k != QUANTIZATION}  # config.json says how weights are packed
        if QUANTIZATION in config:
            params[QUANTIZATION] = config[QUANTIZATION]
        earlier = g.layouts
        ck = Checkpoint(arch=Arch(g.arch.family, params), tensors=tensors, ties=g.ties, kv_sharing=g.kv_sharing,
                        trainable=g.trainable)
    else:
        ties = dict(cfg.TIE) if (cfg.EMBED in tensors and cfg.LM_HEAD not in tensors
                                 and config.get("tie_word_embeddings") is not False) else {}
        earlier = ()
        ck = Checkpoint(arch=_arch(tensors, ties, config, families), tensors=tensors, ties=ties)
    if QUANTIZATION in ck.arch.params:
        packed = quantized.modules(tensors, ck.arch.params[QUANTIZATION], str(path / disk.CONFIG))
        if _flag(options, "dequantize"):
            ck = _dequantized(ck, packed, families)
    layout = Layout(NAME, "quantized" if QUANTIZATION in ck.arch.params else "model",
                    {"metadata": metadata} if metadata else {}, earlier)
    fields = cfg.carried(config, cfg.derived(ck))
    if QUANTIZATION not in ck.arch.params:  # unpacked: the packing's fields go with it
        fields = {k: v for k, v in fields.items() if k not in (QUANTIZATION, cfg.MIRROR)}
    kept = {k: v for k, v in (("config", fields), ("files", disk.carried_files(path))) if v}
    return ck.evolve(layout=layout, extra={HF: kept} if kept else {})


def _arch(tensors: dict[str, Tensor], ties: dict[str, str], config: dict, families: Mapping[str, FamilySchema]) -> Arch:
    """The installed family the tensors fit (``generic`` while packed) with config.json's
    hyper-parameters over those the schema derives."""
    stated = cfg.params_from_config(config)
    if QUANTIZATION in stated:
        return Arch("generic", stated)
    found = graph.recognised_arch({**tensors, **{alias: tensors[target] for alias, target in ties.items()}}, families)
    return Arch(found.family, {**found.params, **stated})


def _dequantized(ck: Checkpoint, packed: dict, families: Mapping[str, FamilySchema]) -> Checkpoint:
    """``ck`` with its weights unpacked, recognised as the family they then fit."""
    tensors = quantized.unpacked(ck.tensors, packed)
    params = {k: v for k, v in ck.arch.params.items() if k != QUANTIZATION}
    found = graph.recognised_arch({**tensors, **{alias: tensors[target] for alias, target in ck.ties.items()}}, families)
    family = found.family if ck.arch.family == "generic" else ck.arch.family
    return ck.evolve(arch=Arch(family, {**found.params, **params}), tensors=tensors)


def write(ck: Checkpoint, path: Path, options: dict[str, Any]) -> None:
    """Write ``ck`` as a model directory at ``path``."""
    fields, files = _kept(ck)
    packed = {}
    if QUANTIZATION in ck.arch.params:
        packed = quantized.modules(ck.tensors, ck.arch.params[QUANTIZATION], "the checkpoint's quantization")
    own = ck.layout.of(NAME)
    metadata = {**FORMAT_METADATA, **(own.facts.get("metadata", {}) if own else {}),
                META_KEY: graph.to_json(ck, "an mlx-lm directory", NAME)}
    config = cfg.dump(cfg.build(cfg.derived(ck), fields))
    disk.write(path, ck.tensors, config, files, metadata, quantized.parameter_count(ck.tensors, packed),
               options.get("max_shard_size", disk.MAX_SHARD_SIZE))


def _kept(ck: Checkpoint) -> tuple[dict, dict]:
    """The carried config fields and files."""
    kept = ck.extra.get(HF, {})
    fields, files = (kept.get("config", {}), kept.get("files", {})) if isinstance(kept, dict) else (None, None)
    if not isinstance(fields, dict) or not isinstance(files, dict) or not all(
            isinstance(v, bytes) or (isinstance(v, Tensor) and v.dtype == "U8" and len(v.shape) == 1) for v in files.values()):
        raise CorruptInput(f"extra[{HF!r}] must hold a config mapping and files (bytes or 1-d U8 tensors)")
    return fields, files


def _flag(options: dict[str, Any], name: str) -> bool:
    value = options.get(name, False)
    if value not in (True, False, "true", "false"):
        raise UsageError(f"--option {name} takes true or false, not {value!r}")
    return value in (True, "true")
