"""A checkpoint's graph as JSON in safetensors metadata, and the family a file's names fit.

Formats whose files are plain safetensors (``safetensors`` itself, MLX step files, an HF
GPT-2 base) cannot say a model's family, hyper-parameters, ties, KV sharing or trainable
set. They keep them as one JSON string under a metadata key of their own, written and
read here. A file without it gets the installed family its names and shapes fit, or
``generic``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs

from . import tree
from .errors import CorruptInput, LossyConversion
from .model import Arch, Checkpoint
from .schema import FamilySchema, recognise
from .tensor import Tensor


@attrs.frozen
class Graph:
    """What the JSON holds: everything of a Checkpoint but its tensors and state."""

    arch: Arch
    ties: dict[str, str]
    kv_sharing: dict[int, int]
    trainable: tuple[str, ...] | None


def to_json(ck: Checkpoint, where: str) -> str:
    """``ck``'s graph as compact JSON; LossyConversion when its hyper-parameters hold
    tensors, which metadata strings cannot (``where`` names the format in the message)."""
    params, tensors = tree.encode(ck.arch.params)
    if tensors:
        raise LossyConversion(f"hyper-parameters hold tensors ({', '.join(tensors)}), which {where} cannot keep; "
                              "convert to canonical instead. Nothing was written.")
    return json.dumps({
        "arch": {"family": ck.arch.family, "params": params},
        "ties": ck.ties,
        "kv_sharing": {str(k): v for k, v in ck.kv_sharing.items()},
        "trainable": list(ck.trainable) if ck.trainable is not None else None,
    }, separators=(",", ":"))


def from_json(text: str, where: str) -> Graph:
    """The graph ``to_json`` wrote; CorruptInput naming ``where`` if it is malformed."""
    try:
        g = json.loads(text)
        return Graph(
            arch=Arch(g["arch"]["family"], tree.decode(g["arch"]["params"], {})),
            ties=dict(g["ties"]),
            kv_sharing={int(k): v for k, v in g.get("kv_sharing", {}).items()},
            trainable=tuple(g["trainable"]) if g["trainable"] is not None else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptInput(f"{where} is malformed ({type(e).__name__}: {e})") from None


def recognised_arch(tensors: Mapping[str, Tensor], families: Mapping[str, FamilySchema]) -> Arch:
    """The family of ``families`` (the installed ones: the core passes them to
    ``to_canonical``) these names and shapes fit, with the hyper-parameters its schema
    derives from them; ``generic`` when none fits."""
    shapes = {name: t.shape for name, t in tensors.items()}
    schema = recognise(families.values(), shapes)
    return Arch(schema.name, schema.derive_params(shapes)) if schema else Arch()
