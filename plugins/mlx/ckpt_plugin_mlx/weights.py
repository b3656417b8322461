"""The weights file: flat dotted keys, as ``tree_flatten(model.parameters())`` gives them.

Names are kept exactly (the canonical name of a tensor is its MLX key), so a file from an
MLX port of nanoGPT is recognised as the ``gpt`` family by the core's schemas, and
anything else is a generic graph. What MLX files cannot say themselves (the family and
hyper-parameters, ties, the trainable set) is written as JSON under the metadata key
``ckpt_core_mlx``; MLX ignores metadata, so ``load_weights(strict=True)`` still works.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ckpt_core import graph, safetensors_io
from ckpt_core.model import Checkpoint
from ckpt_core.schema import FamilySchema
from ckpt_core.tensor import Tensor

META_KEY = "ckpt_core_mlx"
# What mx.load reads: no float64, and of the fp8 kinds only E4M3 (as uint8, bytes intact).
DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F8_E4M3", "C64"})


def read(path: Path, families: Mapping[str, FamilySchema]) -> tuple[dict[str, Tensor], graph.Graph, dict[str, str]]:
    """Lazy tensors, the graph (arch, ties, trainable set, earlier layouts) and the other
    metadata of a weights file (the family, when the file does not state it, is the one of
    ``families`` that fits)."""
    tensors, metadata = safetensors_io.open_file(path)
    metadata = dict(metadata or {})
    stored = metadata.pop(META_KEY, None)
    if stored is None:
        return tensors, graph.Graph(graph.recognised_arch(tensors, families), {}, {}, None), metadata
    return tensors, graph.from_json(stored, f"{path}: metadata {META_KEY!r}"), metadata


def metadata_for(ck: Checkpoint, kept: dict[str, str], format: str) -> dict[str, str]:
    """The metadata to write: ``kept`` (what the source file had) and the graph JSON."""
    return {**kept, META_KEY: graph.to_json(ck, "an MLX step file", format)}


def write(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    safetensors_io.write_file(path, tensors, metadata)
