"""Every key mapping of the plugin, one table per layout (torchtune convert_weights style).

A table maps a key of one naming to a key of another; ``{i}`` is a layer number, ``{j}`` a
value-embedding table. Upstream keys are written without the ``_orig_mod.`` prefix that
``torch.compile`` adds. A ``Stack`` target means one tensor [n, H, C] holding n pieces
[H, C] (modded-nanogpt's ``qkv_w`` / ``qkvo_w``); a ``Rows`` target one tensor [n*H, C]
whose row blocks are the pieces (nanoGPT's ``c_attn``). Splitting and fusing move raw
bytes only (reshape, slice, stack): exact for every dtype.
"""

from __future__ import annotations

import re

import attrs

from ckpt_core.errors import CorruptInput, LossyConversion
from ckpt_core.tensor import Tensor


@attrs.frozen
class Stack:
    """One tensor [n, H, C] made of the n named pieces [H, C], stacked."""

    names: tuple[str, ...]


@attrs.frozen
class Rows:
    """One tensor [n*H, C] made of the n named pieces [H, C], one row block each."""

    names: tuple[str, ...]


def _qkv(prefix: str, *parts: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{p}.weight" for p in parts)


H = "transformer.h.{i}."

# karpathy/nanoGPT ckpt.pt "model": the gpt family's canonical names are nanoGPT's own.
NANOGPT = {
    "transformer.wte.weight": "transformer.wte.weight",
    "transformer.wpe.weight": "transformer.wpe.weight",
    H + "ln_1.weight": H + "ln_1.weight",
    H + "ln_1.bias": H + "ln_1.bias",
    H + "attn.bias": H + "attn.bias",  # the causal mask buffer (torch < 2.0), exact suffix
    H + "attn.c_attn.weight": H + "attn.c_attn.weight",
    H + "attn.c_attn.bias": H + "attn.c_attn.bias",
    H + "attn.c_proj.weight": H + "attn.c_proj.weight",
    H + "attn.c_proj.bias": H + "attn.c_proj.bias",
    H + "ln_2.weight": H + "ln_2.weight",
    H + "ln_2.bias": H + "ln_2.bias",
    H + "mlp.c_fc.weight": H + "mlp.c_fc.weight",
    H + "mlp.c_fc.bias": H + "mlp.c_fc.bias",
    H + "mlp.c_proj.weight": H + "mlp.c_proj.weight",
    H + "mlp.c_proj.bias": H + "mlp.c_proj.bias",
    "transformer.ln_f.weight": "transformer.ln_f.weight",
    "transformer.ln_f.bias": "transformer.ln_f.bias",
    "lm_head.weight": "lm_head.weight",
}

# modded-nanogpt train_gpt.py state_step*.pt "model", layout "qkv" -> modded-gpt names.
MODDED_QKV = {
    "embed.weight": "embed.weight",
    "value_embeds.{j}.weight": "value_embeds.{j}.weight",
    "blocks.{i}.lambdas": "blocks.{i}.lambdas",  # before 2025-07
    "blocks.{i}.attn.lambdas": "blocks.{i}.attn.lambdas",  # before 2025-07
    "blocks.{i}.attn.qkv_w": Stack(_qkv("blocks.{i}.attn.", "q", "k", "v")),
    "blocks.{i}.attn.c_proj.weight": "blocks.{i}.attn.o.weight",
    "blocks.{i}.mlp.c_fc.weight": "blocks.{i}.mlp.fc.weight",
    "blocks.{i}.mlp.c_proj.weight": "blocks.{i}.mlp.proj.weight",
    "lm_head.weight": "lm_head.weight",
    "scalars": "scalars",  # from 2025-07: [5L + padding]
    "skip_weights": "skip_weights",  # before 2025-07
}

# modded-nanogpt train_gpt_medium.py, layout "qkvo" -> modded-gpt names.
MODDED_QKVO = {
    "embed.weight": "embed.weight",
    "value_embeds.{j}.weight": "value_embeds.{j}.weight",
    "blocks.{i}.attn.qkvo_w": Stack(_qkv("blocks.{i}.attn.", "q", "k", "v", "o")),  # [3] is Wo as F.linear uses it
    "blocks.{i}.mlp.fc_w": "blocks.{i}.mlp.fc.weight",
    "blocks.{i}.mlp.proj_w": "blocks.{i}.mlp.proj.weight",
    "lm_head_w": "lm_head.weight",
    "scalars": "scalars",
}

# Between the families: canonical gpt names -> canonical modded-gpt names. Everything else
# (wpe, LayerNorm weights, biases, mask buffers; value embeddings, scalars) has no slot on
# the other side.
GPT_TO_MODDED = {
    "transformer.wte.weight": "embed.weight",
    H + "attn.c_attn.weight": Rows(_qkv("blocks.{i}.attn.", "q", "k", "v")),
    H + "attn.c_proj.weight": "blocks.{i}.attn.o.weight",
    H + "mlp.c_fc.weight": "blocks.{i}.mlp.fc.weight",
    H + "mlp.c_proj.weight": "blocks.{i}.mlp.proj.weight",
    "lm_head.weight": "lm_head.weight",
}


def _regex(pattern: str) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{i}"), r"(?P<i>\d+)").replace(re.escape("{j}"), r"(?P<j>\d+)")
    return re.compile(text + r"\Z")


def _compiled(table: dict, backward: bool) -> list[tuple[re.Pattern, object]]:
    """(regex, entry) for the names of one side of ``table``: backward, a fused entry
    gives one regex per piece, with (fused key, Stack/Rows, piece number)."""
    found = []
    for src, dst in table.items():
        if not backward:
            found.append((_regex(src), dst))
        elif isinstance(dst, str):
            found.append((_regex(dst), src))
        else:
            found.extend((_regex(piece), (src, dst, k)) for k, piece in enumerate(dst.names))
    return found


def _first_match(rules: list, name: str) -> tuple[object, dict[str, str]] | None:
    """The entry of the first rule whose pattern matches ``name``, and the matched fields."""
    for regex, entry in rules:
        m = regex.match(name)
        if m:
            return entry, m.groupdict()
    return None


def forward(tensors: dict[str, Tensor], table: dict) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and split) ``tensors`` from the table's left side to its right side.

    Returns the renamed tensors, in order, and the names no entry matched (left out).
    A tensor object that appears under several names stays one object (a tie).
    """
    out: dict[str, Tensor] = {}
    unmatched: list[str] = []
    rules = _compiled(table, backward=False)
    pieces_of: dict[int, list[Tensor]] = {}
    for name, t in tensors.items():
        found = _first_match(rules, name)
        if found is None:
            unmatched.append(name)
            continue
        dst, fields = found
        if isinstance(dst, str):
            out[dst.format(**fields)] = t
            continue
        if id(t) not in pieces_of:
            pieces_of[id(t)] = split(name, t, dst)
        for piece_name, piece in zip(dst.names, pieces_of[id(t)]):
            out[piece_name.format(**fields)] = piece
    return out, unmatched


def backward(tensors: dict[str, Tensor], table: dict) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and fuse) ``tensors`` from the table's right side back to its left side.

    Returns the renamed tensors and the names no entry matched. A fused tensor takes the
    place of its first piece; a piece without its siblings is refused (LossyConversion).
    """
    slots: dict[str, Tensor | None] = {}
    groups: dict[str, tuple[Stack | Rows, dict[str, str], dict[int, Tensor]]] = {}
    unmatched: list[str] = []
    rules = _compiled(table, backward=True)
    for name, t in tensors.items():
        found = _first_match(rules, name)
        if found is None:
            unmatched.append(name)
            continue
        entry, fields = found
        if isinstance(entry, str):
            slots[entry.format(**fields)] = t
            continue
        src, dst, k = entry
        key = src.format(**fields)
        slots.setdefault(key, None)
        groups.setdefault(key, (dst, fields, {}))[2][k] = t
    for key, (dst, fields, pieces) in groups.items():
        missing = [p.format(**fields) for k, p in enumerate(dst.names) if k not in pieces]
        if missing:
            raise LossyConversion(f"{key} needs {', '.join(missing)} as well: the target layout cannot hold "
                                  "part of a fused tensor. Nothing was written.")
        slots[key] = fuse(key, [pieces[k] for k in range(len(dst.names))], dst)
    return slots, unmatched


def split(name: str, t: Tensor, dst: Stack | Rows) -> list[Tensor]:
    """The pieces of fused tensor ``name``; CorruptInput when its shape does not divide."""
    n = len(dst.names)
    if isinstance(dst, Stack):
        if len(t.shape) != 3 or t.shape[0] != n:
            raise CorruptInput(f"{name}: shape {list(t.shape)}, expected [{n}, H, C] (an unsupported variant?)")
        return [t.slice(0, k, k + 1).reshape(t.shape[1:]) for k in range(n)]
    if len(t.shape) != 2 or t.shape[0] % n:
        raise CorruptInput(f"{name}: shape {list(t.shape)}, expected [{n}*H, C]")
    rows = t.shape[0] // n
    return t.split(0, [rows] * n)


def fuse(name: str, pieces: list[Tensor], dst: Stack | Rows) -> Tensor:
    """The fused tensor ``name`` from its pieces; LossyConversion if they cannot join exactly."""
    shapes = {tuple(p.shape) for p in pieces}
    kinds = {p.dtype for p in pieces}
    if len(kinds) > 1:
        raise LossyConversion(f"{name} joins {', '.join(dst.names)} but they have dtypes {', '.join(sorted(kinds))}; "
                              "cast them to one first (--cast). Nothing was written.")
    if len(shapes) > 1 or len(next(iter(shapes))) != 2:
        raise LossyConversion(f"{name} stacks pieces of one [H, C] shape, got {[list(p.shape) for p in pieces]} "
                              "(qkvo_w needs H == C). Nothing was written.")
    stacked = Tensor.stack(pieces, 0)
    if isinstance(dst, Stack):
        return stacked
    return stacked.reshape(-1, stacked.shape[2])
