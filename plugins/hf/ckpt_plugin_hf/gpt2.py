"""GPT-2 (``GPT2LMHeadModel``) tensors <-> the core's ``gpt`` family.

The names are the same; the four ``Conv1D`` weights (``families.GPT2_CONV1D``) are stored
[in, out] and transposed exactly (a lazy byte move, no float arithmetic) each way. GPT-2
always has biases, nanoGPT with ``bias=False`` has none: the writer adds exact zeros (which
compute the same) and names them in the shards' metadata (``ADDED``), and the reader drops
the named ones while they are still all zero, so nanoGPT -> hf -> nanoGPT gives the same
tensors back. A GPT-2 that has no ``lm_head.weight`` ties it to ``transformer.wte.weight``.

Hyper-parameters come from the tensors (``gpt``'s derivations, and ``bias``: whether the
model has biases of its own) and config.json. A directory ckpt-core wrote also names the
ones its checkpoint had (``PARAMS``), so it reads back with exactly those.
"""

from __future__ import annotations

import json
import re

from ckpt_core import CorruptInput, Tensor
from ckpt_core.gpt import GPT

from .families import GPT2_CONV1D, H

ADDED = "ckpt_core_zero_biases"  # safetensors metadata key: the zero biases the writer added
PARAMS = "ckpt_core_params"  # safetensors metadata key: the hyper-parameters' names
BIASES = (H + "ln_1.bias", H + "attn.c_attn.bias", H + "attn.c_proj.bias", H + "ln_2.bias", H + "mlp.c_fc.bias",
          H + "mlp.c_proj.bias")
LAST_BIAS = "transformer.ln_f.bias"
PREFIX = "transformer."
LAYER = re.compile(r"transformer\.h\.(\d+)\.")


def _pattern(text: str) -> re.Pattern:
    return re.compile(re.escape(text).replace(re.escape("{i}"), r"\d+") + r"\Z")


CONV1D = tuple(map(_pattern, GPT2_CONV1D))
BIAS = (*map(_pattern, BIASES), _pattern(LAST_BIAS))


def is_conv1d(name: str) -> bool:
    return any(p.match(name) for p in CONV1D)


def from_hf(tensors: dict[str, Tensor], metadata: dict[str, str], where: str) -> dict[str, Tensor]:
    """Canonical tensors of a GPT-2 state dict: names of a bare ``GPT2Model`` (the hub's
    ``gpt2``: ``wte.weight``, ``h.0...``) under ``transformer.``, Conv1D weights transposed,
    the zero biases a writer added (and nothing else) dropped."""
    if PREFIX + "wte.weight" not in tensors and "wte.weight" in tensors:
        tensors = {n if n == "lm_head.weight" else PREFIX + n: t for n, t in tensors.items()}
    added = _names(metadata, ADDED, where) or []
    if added and all(n in tensors and _all_zero(tensors[n]) for n in added):
        tensors = {n: t for n, t in tensors.items() if n not in added}
    return {n: (t.T if is_conv1d(n) and len(t.shape) == 2 else t) for n, t in tensors.items()}


def to_hf(tensors: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """GPT-2 tensors for canonical ``gpt`` ones, and the names of the zero biases added
    (none unless the model has no biases at all, as nanoGPT's ``bias=False``)."""
    out = {n: (t.T if is_conv1d(n) else t) for n, t in tensors.items()}
    if any(p.match(n) for n in tensors for p in BIAS):
        return out, []
    layers = sorted({int(m.group(1)) for n in tensors if (m := LAYER.match(n))})
    wanted = [b.replace("{i}", str(i)) for i in layers for b in BIASES] + [LAST_BIAS]
    added = [b for b in wanted if _weight_of(b) in tensors]
    for b in added:
        weight = tensors[_weight_of(b)]
        size = weight.shape[0]
        out[b] = Tensor.from_bytes(bytes(size * (weight.nbytes // max(weight.numel, 1))), weight.dtype, (size,))
    return _ordered(out, added), added


def _weight_of(bias: str) -> str:
    return bias.removesuffix(".bias") + ".weight"


def params(tensors: dict[str, Tensor], stated: dict, metadata: dict[str, str], where: str) -> dict:
    """Hyper-parameters of canonical GPT-2 ``tensors``: derived, then ``stated`` by the
    config; only those named in the metadata when a writer named them."""
    shapes = {n: t.shape for n, t in tensors.items()}
    found = {**GPT.derive_params(shapes), "bias": any(p.match(n) for n in shapes for p in BIAS), **stated}
    names = _names(metadata, PARAMS, where)
    return found if names is None else {k: v for k, v in found.items() if k in names}


def metadata(added: list[str], params: dict) -> dict[str, str]:
    """What a written directory's shards record: the zero biases added, the parameters' names."""
    out = {PARAMS: json.dumps(sorted(map(str, params)), separators=(",", ":"))}
    if added:
        out[ADDED] = json.dumps(added, separators=(",", ":"))
    return out


def _names(metadata: dict[str, str], key: str, where: str) -> list[str] | None:
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise CorruptInput(f"{where}: metadata {key!r} is not a JSON list of names")
    return names


def _all_zero(t: Tensor) -> bool:
    return not any(any(chunk) for chunk in t.iter_chunks())


def _ordered(tensors: dict[str, Tensor], added: list[str]) -> dict[str, Tensor]:
    """Each added bias right after its weight, as a GPT-2 state dict orders them."""
    after = {_weight_of(b): b for b in added}
    out: dict[str, Tensor] = {}
    for n, t in tensors.items():
        if n not in after.values():
            out[n] = t
            if n in after:
                out[after[n]] = tensors[after[n]]
    return out
