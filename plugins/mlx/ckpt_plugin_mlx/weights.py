"""The weights file: flat dotted keys, as ``tree_flatten(model.parameters())`` gives them.

Names are kept exactly (the canonical name of a tensor is its MLX key), so a file from an
MLX port of nanoGPT is recognised as the ``gpt`` family by the core's schemas, and
anything else is a generic graph. What MLX files cannot say themselves (the family and
hyper-parameters, ties, the trainable set) is written as JSON under the metadata key
``ckpt_core_mlx``; MLX ignores metadata, so ``load_weights(strict=True)`` still works.
"""

from __future__ import annotations

import json
from pathlib import Path

from ckpt_core import safetensors_io, tree
from ckpt_core.errors import CorruptInput, LossyConversion
from ckpt_core.model import Arch, Checkpoint
from ckpt_core.schema import recognise
from ckpt_core.tensor import Tensor

META_KEY = "ckpt_core_mlx"
# What mx.load reads: no float64, and of the fp8 kinds only E4M3 (as uint8, bytes intact).
DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F8_E4M3", "C64"})


def read(path: Path) -> tuple[dict[str, Tensor], Arch, dict[str, str], tuple[str, ...] | None, dict[str, str]]:
    """Lazy tensors, arch, ties, trainable set and the other metadata of a weights file."""
    tensors, metadata = safetensors_io.open_file(path)
    metadata = dict(metadata or {})
    graph = metadata.pop(META_KEY, None)
    if graph is None:
        return tensors, _recognised(tensors), {}, None, metadata
    try:
        g = json.loads(graph)
        arch = Arch(g["arch"]["family"], tree.decode(g["arch"]["params"], {}))
        ties = dict(g["ties"])
        trainable = tuple(g["trainable"]) if g["trainable"] is not None else None
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptInput(f"{path}: metadata {META_KEY!r} is malformed ({type(e).__name__}: {e})") from None
    return tensors, arch, ties, trainable, metadata


def _recognised(tensors: dict[str, Tensor]) -> Arch:
    """The installed family these names and shapes fit, else generic."""
    from ckpt_core.plugins import registry  # the registry imports this plugin: import when used

    shapes = {name: t.shape for name, t in tensors.items()}
    schema = recognise(registry().families.values(), shapes)
    return Arch(schema.name, schema.derive_params(shapes)) if schema else Arch()


def metadata_for(ck: Checkpoint, kept: dict[str, str]) -> dict[str, str]:
    """The metadata to write: ``kept`` (what the source file had) and the graph JSON.
    Refuses hyper-parameters that hold tensors (metadata is strings only)."""
    params, arch_tensors = tree.encode(ck.arch.params)
    if arch_tensors:
        raise LossyConversion(f"hyper-parameters hold tensors ({', '.join(arch_tensors)}), which an MLX step file cannot keep; "
                              "convert to canonical instead. Nothing was written.")
    graph = {
        "arch": {"family": ck.arch.family, "params": params},
        "ties": ck.ties,
        "trainable": list(ck.trainable) if ck.trainable is not None else None,
    }
    return {**kept, META_KEY: json.dumps(graph, separators=(",", ":"))}


def write(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    safetensors_io.write_file(path, tensors, metadata)
