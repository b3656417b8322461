"""The key mapping between moshi files and canonical names, in one table each way.

Canonical names are moshi's current names, so most keys map to themselves. What differs:

- TTT layers wrap the original layer: its tensors are saved under ``original_layer.`` and
  again under ``seq_modeling_block.original_layer.`` (one module, two names: a tie).
- A LoRA-wrapped linear keeps its base at ``X.frozen_W.weight``: canonically ``X.weight``.
- Legacy files name attention ``in_proj_weight`` / ``out_proj.weight``, with the
  depformer's per-step weights stacked along dim 0 (moshi's loader splits them).
"""

from __future__ import annotations

import re

from ckpt_core import CorruptInput, Tensor

# moshi key -> canonical name. ``{i}``: a layer number; ``{rest}``: the rest of the key.
# Scanned in this order both ways; the last row applies only to TTT layers when writing.
TTT_KEYS = {
    "transformer.layers.{i}.seq_modeling_block.original_layer.{rest}": "transformer.layers.{i}.ttt.original_layer.{rest}",
    "transformer.layers.{i}.seq_modeling_block.forward_ssm_gating.gating_alpha": "transformer.layers.{i}.ttt.forward_gating_alpha",
    "transformer.layers.{i}.seq_modeling_block.backward_ssm_gating.gating_alpha": "transformer.layers.{i}.ttt.backward_gating_alpha",
    "transformer.layers.{i}.seq_modeling_block.ttt_layer.ttt.{rest}": "transformer.layers.{i}.ttt.{rest}",
    "transformer.layers.{i}.original_layer.{rest}": "transformer.layers.{i}.{rest}",
}

# Legacy attention key suffix -> current suffix, one per step ``{k}`` (stacked along dim 0).
LEGACY_ATTENTION = {
    "self_attn.in_proj_weight": "self_attn.in_projs.{k}.weight",
    "self_attn.in_proj.weight": "self_attn.in_projs.{k}.weight",
    "self_attn.in_proj.lora_A.weight": "self_attn.in_projs.{k}.lora_A.weight",
    "self_attn.in_proj.lora_B.weight": "self_attn.in_projs.{k}.lora_B.weight",
    "self_attn.out_proj.weight": "self_attn.out_projs.{k}.weight",
    "self_attn.out_proj.lora_A.weight": "self_attn.out_projs.{k}.lora_A.weight",
    "self_attn.out_proj.lora_B.weight": "self_attn.out_projs.{k}.lora_B.weight",
}
# What legacy writing produces (the first legacy name of each current suffix).
LEGACY_WRITE = {"self_attn.in_projs.{k}.weight": "self_attn.in_proj_weight",
                "self_attn.out_projs.{k}.weight": "self_attn.out_proj.weight"}

FROZEN = ".frozen_W.weight"
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"
TTT_LAYER = re.compile(r"transformer\.layers\.(\d+)\.ttt\.")
ALIAS = re.compile(r"(transformer\.layers\.\d+\.)ttt\.original_layer\.(.+)")


def _regex(pattern: str) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)").replace(re.escape("{rest}"), r"(?P<rest>.+)")
    return re.compile(text + r"\Z")


_READ = [(_regex(src), dst) for src, dst in TTT_KEYS.items()]
_WRITE = [(_regex(dst), src) for src, dst in TTT_KEYS.items()]


def to_canonical(key: str) -> str:
    """The canonical name of a (current-naming) moshi key."""
    if key.endswith(FROZEN):
        key = key[:-len(FROZEN)] + ".weight"
    for regex, target in _READ:
        m = regex.match(key)
        if m:
            return target.format(**m.groupdict())
    return key


def to_moshi(name: str, ttt_layers: set[int]) -> str:
    """The moshi key of a canonical name; ``ttt_layers`` are the layers wrapped for TTT."""
    for regex, target in _WRITE:
        m = regex.match(name)
        if m and (target.startswith("transformer.layers.{i}.seq_modeling_block.") or int(m["i"]) in ttt_layers):
            return target.format(**m.groupdict())
    return name


def ttt_layers(names) -> set[int]:
    """Layers with TTT tensors, from canonical names."""
    return {int(m.group(1)) for m in map(TTT_LAYER.match, names) if m}


def split_legacy(key: str, t: Tensor, steps: int) -> dict[str, Tensor]:
    """A legacy attention tensor as its current per-step tensors (any other key: itself)."""
    for old, new in LEGACY_ATTENTION.items():
        if key.endswith(old):
            prefix = key[:-len(old)]
            if t.shape[0] % steps:
                raise CorruptInput(f"{key}: {t.shape[0]} rows do not split into {steps} steps")
            size = t.shape[0] // steps
            return {prefix + new.format(k=k): piece for k, piece in enumerate(t.split(0, [size] * steps))}
    return {key: t}


def join_legacy(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Current-naming moshi tensors with attention stacked back under the legacy names."""
    out: dict[str, Tensor] = {}
    groups: dict[str, list[tuple[int, Tensor]]] = {}
    for key, t in tensors.items():
        for new, old in LEGACY_WRITE.items():
            m = re.fullmatch(r"(.*)" + re.escape(new).replace(re.escape("{k}"), r"(\d+)"), key)
            if m:
                groups.setdefault(m.group(1) + old, []).append((int(m.group(2)), t))
                break
        else:
            out[key] = t
    for key, pieces in groups.items():
        pieces.sort(key=lambda p: p[0])
        out[key] = pieces[0][1] if len(pieces) == 1 else Tensor.concat([t for _, t in pieces], 0)
    return out
