"""The ``safetensors`` format: a bare safetensors file, or an HF-style sharded directory.

What the world already has, read as a graph that keeps every name. When the names fit an
installed family schema, the family and its hyper-parameters are recognised; otherwise the
family is ``generic``. Writing stores ties, KV sharing and the trainable set as JSON under
the metadata key ``ckpt_core`` (beside ``"format": "pt"``, which transformers requires), so
a round trip through a plain file loses nothing it can hold, and the layouts of the formats
the checkpoint was in before, so converting back to them needs no options. Adapters and training state
it cannot hold: converting them here is refused (see ``--merge-adapters``, ``--allow-loss``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import graph, safetensors_io
from ..dtypes import ALL_DTYPES
from ..errors import CorruptInput, NotFound
from ..hookspecs import hookimpl
from ..model import Checkpoint, Detection, FormatSpec, Layout
from ..schema import FamilySchema

NAME = "safetensors"
META_KEY = "ckpt_core"

SPEC = FormatSpec(
    name=NAME,
    description="a .safetensors file, or a directory of shards with model.safetensors.index.json",
    capabilities=frozenset({"ties", "kv_sharing", "trainable", "quantized"}),
    dtypes=ALL_DTYPES,
    patterns=("*.safetensors", "*.safetensors.index.json"),
    options={
        "max_shard_size": "largest shard when writing a directory, as 5GB (decimal) or 4GiB; default 5GB",
    },
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    if path.is_file():
        try:
            entries, metadata, _ = safetensors_io.read_header(path)
        except CorruptInput as e:
            if path.suffix == ".safetensors":
                return Detection(NAME, 0.1, f"named .safetensors but unreadable: {e}", path)
            return None
        confidence = 0.9 if metadata and META_KEY in metadata else 0.5
        return Detection(NAME, confidence, f"safetensors file with {len(entries)} tensors", path)
    if path.is_dir():
        files = _weight_files(path)
        indexed = safetensors_io.find_index(path) is not None
        if not files or (len(files) > 1 and not indexed):
            return None  # several files and no index: nothing says how they join
        kind = "sharded directory with index" if indexed else "directory with one safetensors file"
        if (path / "config.json").exists():
            return Detection(NAME, 0.2, f"{kind} with a config.json (a model-family plugin may read it better)", path)
        return Detection(NAME, 0.4, kind, path)
    return None


def _weight_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("*.safetensors") if p.is_file())


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]):
    if format != NAME:
        return None
    if path.is_dir():
        index = safetensors_io.find_index(path)
        if index is not None:
            tensors, index_meta = safetensors_io.open_sharded(index)
            first = next(iter(tensors.values()), None)
            metadata = safetensors_io.read_header(first.file_range.path)[1] if first is not None else None
            variant = "sharded"
        else:
            files = _weight_files(path)
            if len(files) != 1:
                raise NotFound(f"{path}: {len(files)} .safetensors files and no *.safetensors.index.json to tell how they join")
            tensors, metadata = safetensors_io.open_file(files[0])
            variant = "directory"
    else:
        tensors, metadata = safetensors_io.open_file(path)
        variant = "file"
    metadata = dict(metadata or {})
    stored_graph = metadata.pop(META_KEY, None)
    if stored_graph is None:
        return Checkpoint(arch=graph.recognised_arch(tensors, families), tensors=tensors, layout=Layout(NAME, variant, {"metadata": metadata}))
    g = graph.from_json(stored_graph, f"{path}: metadata {META_KEY!r}")
    ck = Checkpoint(arch=g.arch, tensors=tensors, ties=g.ties, kv_sharing=g.kv_sharing, trainable=g.trainable,
                    layout=Layout(NAME, variant, {"metadata": metadata}, g.layouts))
    ck.validate()
    return ck


@hookimpl
def from_canonical(checkpoint: Checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != NAME:
        return None
    metadata = {"format": "pt"}
    own = checkpoint.layout.of(NAME)
    if own is not None:
        metadata.update(own.facts.get("metadata", {}))
    metadata[META_KEY] = graph.to_json(checkpoint, "the safetensors format", NAME)
    if path.suffix == ".safetensors":
        safetensors_io.write_file(path, checkpoint.tensors, metadata)
    else:
        path.mkdir()
        safetensors_io.write_sharded(path, checkpoint.tensors, options.get("max_shard_size", "5GB"), metadata)
    return True
