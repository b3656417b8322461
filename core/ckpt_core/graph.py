"""A checkpoint's graph as JSON in safetensors metadata, and the family a file's names fit.

Formats whose files are plain safetensors (``safetensors`` itself, MLX step files, an HF
GPT-2 base) cannot say a model's family, hyper-parameters, ties, KV sharing or trainable
set. They keep them as one JSON string under a metadata key of their own, written and
read here, with the layouts of the formats the checkpoint was in before (``Layout.trail``),
so that converting back writes those formats' files as they were. A file without it gets
the installed family its names and shapes fit, or ``generic``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs

from . import tree
from .errors import CorruptInput, LossyConversion
from .model import Arch, Checkpoint, Layout
from .schema import FamilySchema, recognise
from .tensor import Tensor


@attrs.frozen
class Graph:
    """What the JSON holds: everything of a Checkpoint but its tensors and state."""

    arch: Arch
    ties: dict[str, str]
    kv_sharing: dict[int, int]
    trainable: tuple[str, ...] | None
    layouts: tuple[Layout, ...] = ()


def to_json(ck: Checkpoint, where: str, format: str) -> str:
    """``ck``'s graph as compact JSON, for a file of ``format``; LossyConversion when its
    hyper-parameters hold tensors, which metadata strings cannot (``where`` names the
    format in the message)."""
    params, tensors = tree.encode(ck.arch.params)
    if tensors:
        raise LossyConversion(f"hyper-parameters hold tensors ({', '.join(tensors)}), which {where} cannot keep; "
                              "convert to canonical instead. Nothing was written.")
    data = {
        "arch": {"family": ck.arch.family, "params": params},
        "ties": ck.ties,
        "kv_sharing": {str(k): v for k, v in ck.kv_sharing.items()},
        "trainable": list(ck.trainable) if ck.trainable is not None else None,
    }
    layouts = _layouts_data(ck, format)
    if layouts:
        data["layouts"] = layouts
    return json.dumps(data, separators=(",", ":"))


LAYOUTS_KEY = "ckpt_core_layouts"  # safetensors metadata key of ``layouts_to_json``, where no graph is written


def layouts_to_json(ck: Checkpoint, format: str) -> str | None:
    """The layouts a file of ``format`` records (``Layout.trail``) as compact JSON, for
    formats whose safetensors metadata has room for them (under ``LAYOUTS_KEY``) but not for
    a graph; None when there are none."""
    layouts = _layouts_data(ck, format)
    return json.dumps(layouts, separators=(",", ":")) if layouts else None


def layouts_from_json(text: str, where: str) -> tuple[Layout, ...]:
    """The layouts ``layouts_to_json`` wrote; CorruptInput naming ``where`` if malformed."""
    try:
        return _layouts(json.loads(text))
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CorruptInput(f"{where} is malformed ({type(e).__name__}: {e})") from None


def _layouts_data(ck: Checkpoint, format: str) -> list[dict]:
    """JSON data of the layouts a file of ``format`` records. A layout whose facts hold
    tensors is left out: layout facts are hints for writing files back, not content."""
    found = []
    for layout in ck.layout.trail(format):
        try:
            facts, tensors = tree.encode(layout.facts)
        except TypeError:
            continue
        if not tensors:
            found.append({"format": layout.format, "variant": layout.variant, "facts": facts})
    return found


def _layouts(data: list) -> tuple[Layout, ...]:
    return tuple(Layout(str(e["format"]), str(e["variant"]), dict(tree.decode(e["facts"], {}))) for e in data)


def from_json(text: str, where: str) -> Graph:
    """The graph ``to_json`` wrote; CorruptInput naming ``where`` if it is malformed."""
    try:
        g = json.loads(text)
        return Graph(
            arch=Arch(g["arch"]["family"], tree.decode(g["arch"]["params"], {})),
            ties=dict(g["ties"]),
            kv_sharing={int(k): v for k, v in g.get("kv_sharing", {}).items()},
            trainable=tuple(g["trainable"]) if g["trainable"] is not None else None,
            layouts=_layouts(g.get("layouts", [])),
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
