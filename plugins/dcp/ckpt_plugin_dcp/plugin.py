"""The ckpt-core hooks of ckpt-plugin-dcp: the ``dcp`` format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_core import Detection, FamilySchema, FormatSpec, hookimpl

from . import hfshards, metadata, reader, writer

SPEC = FormatSpec(
    name=reader.NAME,
    description="a torch.distributed.checkpoint directory (.metadata + __R_N.distcp: FSDP2, torchtitan)",
    capabilities=frozenset({"ties", "kv_sharing", "trainable", "train_state", "optimizer_state"}),
    patterns=(".metadata", "__*_*.distcp", "shard-*-model-*-of-*.safetensors", "sharded/"),
    options={"params": "hyper-parameters the tensors cannot show, merged over the recognised ones, as "
                       "{'n_head': 32, 'n_kv_head': 8} (DCP keeps no config; --to hf needs the heads)",
             "world_size": "writing: the ranks to shard dim 0 across, as FSDP2 does (default 1)",
             "names": "writing: torchtitan for torchtitan's Llama names (wq/wk permuted back; needs the head counts), "
                      "hf for the names as they are (default: torchtitan when read from torchtitan's names)"},
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    if not path.is_dir():
        return None
    if not (path / metadata.NAME).is_file():
        shards = hfshards.shard_files(path)
        if shards and hfshards.is_shard(shards[0]):
            return Detection(reader.NAME, 0.95, f"{len(shards)} safetensors shards of DCP's HuggingFaceStorageWriter", path)
        return None
    with open(path / metadata.NAME, "rb") as f:
        if f.read(1) != b"\x80":  # a pickle of protocol 2 or later, as torch writes
            return None
    shards = sum(1 for p in path.glob("*.distcp"))
    return Detection(reader.NAME, 0.95, f"torch.distributed.checkpoint directory: .metadata and {shards} .distcp files", path)


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]):
    if format != reader.NAME:
        return None
    return reader.read(path, families, params=options.get("params") or {})


@hookimpl
def train_state(path: Path, format: str):
    if format != reader.NAME:
        return None
    return reader.read(path, {}, with_tensors=False).train_state


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != reader.NAME:
        return None
    writer.write(checkpoint, path, options)
    return True
