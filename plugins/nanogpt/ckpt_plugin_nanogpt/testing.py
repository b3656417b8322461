"""Hypothesis strategies for this plugin's formats (tests only: needs hypothesis).

The fused modded-nanogpt layouts hold less than the ``modded-gpt`` schema says: a fused
tensor has one dtype, every layer has attention, and qkvo needs q/k/v/o of one shape and
none of the pre-2025-07 scalar tensors. ``checkpoints(spec, family)`` draws exactly what a
format of this plugin holds, for its own conformance tests and the every-pair test.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ckpt_core.schema import FamilySchema, TensorRule
from ckpt_core.testing import checkpoints_for

from .family import MODDED_GPT

FUSED_LAYOUTS = {"modded-nanogpt": "qkv", "modded-nanogpt-medium": "qkvo"}


def holdable(layout: str) -> FamilySchema:
    """``modded-gpt`` as the fused ``layout`` (``qkv`` or ``qkvo``) can hold it."""
    rules = []
    for rule in MODDED_GPT.tensors:
        if ".attn." in rule.pattern and rule.pattern.endswith((".q.weight", ".k.weight", ".v.weight", ".o.weight")):
            shape = tuple("d_model" if d == "d_attn" else d for d in rule.shape) if layout == "qkvo" else rule.shape
            rule = TensorRule(rule.pattern, shape)
        elif layout == "qkvo" and rule.pattern in ("blocks.{i}.lambdas", "blocks.{i}.attn.lambdas", "skip_weights"):
            continue
        rules.append(rule)
    derive = {k: v for k, v in MODDED_GPT.derive.items() if layout != "qkvo" or k != "d_attn"}
    return FamilySchema(MODDED_GPT.name, MODDED_GPT.description, tuple(rules), derive)


def checkpoints(spec, family: str) -> st.SearchStrategy:
    """Checkpoints of ``family`` that ``spec`` (a format of this plugin) holds as they are:
    for the fused layouts, tensors of one drawn dtype, modded-gpt narrowed by ``holdable``."""
    layout = FUSED_LAYOUTS.get(spec.name)
    if layout is None:
        return checkpoints_for(spec, family)
    schema = holdable(layout) if family == MODDED_GPT.name else family
    return st.sampled_from(sorted(spec.dtypes)).flatmap(lambda d: checkpoints_for(spec, schema, dtypes=[d]))
