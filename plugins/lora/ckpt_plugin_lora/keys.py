"""The key tables: the nanoGPT LoRA fork, peft on Hugging Face GPT-2, and HF GPT-2 itself.

Each table maps an upstream key pattern to ``(canonical pattern, part)``. ``{m}`` is a
module path and ``{i}`` a layer number. The part says what the upstream tensor is:

- ``base``: the tensor itself; ``T``: the tensor transposed (HF Conv1D stores [in, out]);
- ``a`` / ``b``: the adapter's ``a`` [r, in] or ``b`` [out, r] as canonical has them;
- ``aT`` / ``bT``: the adapter's ``a`` or ``b`` transposed.

The fork's embedding adapter is an embedding table ``lora_A`` [V, r] and a ``lora_B``
[C, r] with delta ``A @ B.T``: canonical ``b`` is ``lora_A`` and ``a`` is ``lora_B.T``.
"""

from __future__ import annotations

import functools
import re

# The fork's LoRA modules: a main weight plus two matrices, oriented by the adapter's kind.
FORK = {
    "linear": {
        "{m}.main_weight.weight": ("{m}.weight", "base"),
        "{m}.main_weight.bias": ("{m}.bias", "base"),
        "{m}.lora_A.weight": ("{m}.weight", "a"),
        "{m}.lora_B.weight": ("{m}.weight", "b"),
    },
    "embedding": {
        "{m}.main_weight.weight": ("{m}.weight", "base"),
        "{m}.lora_A.weight": ("{m}.weight", "b"),
        "{m}.lora_B.weight": ("{m}.weight", "aT"),
    },
}
# The modules the fork makes LoRA modules, and the adapter kind of each.
FORK_TARGETS = {"transformer.h.{i}.attn.c_attn": "linear", "transformer.wte": "embedding"}
TARGET_OPTIONS = {"attn": "transformer.h.{i}.attn.c_attn", "embedding": "transformer.wte"}

PEFT_PREFIX = "base_model.model."
# peft on any model (GPT-2's Conv1D targets, fan_in_fan_out, still store A [r, in], B [out, r]);
# ``base_layer``: the whole weight of a targeted embedding or head, which peft saves too.
PEFT = {
    "{m}.base_layer.weight": ("{m}.weight", "base"),
    "{m}.lora_A.weight": ("{m}.weight", "a"),
    "{m}.lora_B.weight": ("{m}.weight", "b"),
    "{m}.lora_embedding_A": ("{m}.weight", "bT"),
    "{m}.lora_embedding_B": ("{m}.weight", "aT"),
}
PEFT_EMBEDDING_PARTS = ("{m}.lora_embedding_A", "{m}.lora_embedding_B")

@functools.lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{m}"), r"(?P<m>.+?)").replace(re.escape("{i}"), r"(?P<i>\d+)")
    return re.compile(text + r"\Z")


def match(table: dict, key: str) -> tuple[str, str] | None:
    """``(canonical name, part)`` of ``key`` in ``table``, or None."""
    for pattern, (target, part) in table.items():
        m = _regex(pattern).match(key)
        if m:
            return target.format(**m.groupdict()), part
    return None


def upstream(table: dict, name: str, part: str) -> str | None:
    """The upstream key of canonical ``name`` in role ``part`` (the inverse of ``match``)."""
    for pattern, (target, p) in table.items():
        if p != part:
            continue
        m = _regex(target).match(name)
        if m:
            return pattern.format(**m.groupdict())
    return None


def module_of(weight_name: str) -> str | None:
    """``x.y`` for a canonical ``x.y.weight``."""
    return weight_name[: -len(".weight")] if weight_name.endswith(".weight") else None


def fits(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (``{m}``: a module path, ``{i}``: a layer)."""
    return _regex(pattern).match(name) is not None


def fork_target(module: str) -> str | None:
    """The adapter kind the fork gives ``module`` (c_attn: linear, wte: embedding), or None."""
    return next((kind for pattern, kind in FORK_TARGETS.items() if fits(pattern, module)), None)


def orient(t, part: str):
    """An upstream tensor as its canonical role has it (``T``, ``aT``, ``bT`` transpose)."""
    return t.T if part.endswith("T") else t
