"""torchtitan's own Llama names, mapped to transformers' (the ``llama`` family's names).

torchtitan's Llama saves ``tok_embeddings``, ``layers.N.attention.wq`` ... and keeps the
rows of ``wq``/``wk`` in the order its rotary embedding (adjacent pairs) uses, where
transformers rotates the two halves of each head. Its ``convert_to_hf`` renames each
tensor and permutes the rows of each head of ``wq`` (``n_head`` heads) and ``wk``
(``n_kv_head``)::

    w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)

and its ``from_hf`` undoes it. Here both are lazy reshapes and a transpose of raw words:
exact for every dtype. The head counts are not in the tensors' shapes, so they come from
``--option params={"n_head": 32, "n_kv_head": 8}``; without them the names are kept as saved.
The AdamW moments of ``wq``/``wk`` are permuted with their weight (they are per element).
"""

from __future__ import annotations

import re
from typing import Any

from ckpt_core import Tensor, UsageError

L, HF = "layers.{i}.", "model.layers.{i}."
# torchtitan name -> (transformers Llama name, the head count whose RoPE permutation it takes)
NAMES = {
    "tok_embeddings.weight": ("model.embed_tokens.weight", None),
    L + "attention.wq.weight": (HF + "self_attn.q_proj.weight", "n_head"),
    L + "attention.wk.weight": (HF + "self_attn.k_proj.weight", "n_kv_head"),
    L + "attention.wv.weight": (HF + "self_attn.v_proj.weight", None),
    L + "attention.wo.weight": (HF + "self_attn.o_proj.weight", None),
    L + "feed_forward.w1.weight": (HF + "mlp.gate_proj.weight", None),
    L + "feed_forward.w2.weight": (HF + "mlp.down_proj.weight", None),
    L + "feed_forward.w3.weight": (HF + "mlp.up_proj.weight", None),
    L + "attention_norm.weight": (HF + "input_layernorm.weight", None),
    L + "ffn_norm.weight": (HF + "post_attention_layernorm.weight", None),
    "norm.weight": ("model.norm.weight", None),
    "output.weight": ("lm_head.weight", None),
}
FACT = "names"  # layout fact: "torchtitan" when the names were mapped on reading


def _rules(table: dict[str, tuple[str, str | None]], reverse: bool) -> list[tuple[re.Pattern, str, str | None]]:
    def regex(pattern: str) -> re.Pattern:
        return re.compile(re.escape(pattern).replace(re.escape("{i}"), r"(\d+)") + r"\Z")

    return [(regex(hf), titan, heads) if reverse else (regex(titan), hf, heads) for titan, (hf, heads) in table.items()]


TO_HF, FROM_HF = _rules(NAMES, False), _rules(NAMES, True)


def _match(name: str, rules) -> tuple[str, str | None] | None:
    for regex, target, heads in rules:
        m = regex.match(name)
        if m:
            return target.replace("{i}", m.group(1)) if m.groups() else target, heads
    return None


def is_torchtitan(names: list[str]) -> bool:
    """Whether model tensor names are torchtitan's Llama names (all of them)."""
    return "tok_embeddings.weight" in names and all(_match(n, TO_HF) for n in names)


def heads(params: dict[str, Any], where: str) -> dict[str, int]:
    """``n_head`` and ``n_kv_head`` (default: ``n_head``) of ``params``, checked."""
    found = {"n_head": params.get("n_head"), "n_kv_head": params.get("n_kv_head", params.get("n_head"))}
    if not all(type(v) is int and v > 0 for v in found.values()):
        raise UsageError(f"{where}: torchtitan's wq/wk need the head counts for the RoPE permutation: "
                         "--option params={'n_head': 32, 'n_kv_head': 8}")
    return found


def _permute(t: Tensor, count: int, undo: bool, name: str) -> Tensor:
    """Rows of each head reordered (``convert_to_hf``'s permutation; ``undo``: ``from_hf``'s)."""
    rows, cols = t.shape if len(t.shape) == 2 else (0, 0)
    if len(t.shape) != 2 or rows % (2 * count):
        raise UsageError(f"{name} {list(t.shape)}: its rows do not split into {count} heads of rotary pairs; "
                         "check --option params' head counts")
    half = rows // count // 2
    shape = (count, 2, half, cols) if undo else (count, half, 2, cols)
    return t.reshape(*shape).transpose(0, 2, 1, 3).reshape(rows, cols)


def rename(name: str, to_hf: bool) -> tuple[str, str | None]:
    """The other side's name of ``name`` and the head count whose permutation its rows take
    (None: none); a name the table does not list stays as it is."""
    return _match(name, TO_HF if to_hf else FROM_HF) or (name, None)


def mapped(tensors: dict[str, Tensor], param_state: dict[str, dict[str, Any]], groups: list[dict[str, Any]],
           ties: dict[str, str], to_hf: bool, counts: dict[str, int]):
    """Tensors, the optimizer's per-parameter state, its groups (``params``: names) and ties,
    renamed to the other side, wq/wk and their moments permuted."""
    def carried(name: str, value: Any) -> Any:
        head = rename(name, to_hf)[1]
        if head and isinstance(value, Tensor) and value.shape:
            return _permute(value, counts[head], undo=not to_hf, name=name)
        return value

    def new(name: str) -> str:
        return rename(name, to_hf)[0]

    tensors = {new(n): carried(n, t) for n, t in tensors.items()}
    param_state = {new(n): {slot: carried(n, v) for slot, v in slots.items()} for n, slots in param_state.items()}
    groups = [{k: [new(p) if isinstance(p, str) else p for p in v] if k == "params" and isinstance(v, list) else v
               for k, v in g.items()} for g in groups]
    return tensors, param_state, groups, {new(a): new(b) for a, b in ties.items()}
