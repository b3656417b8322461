"""The plugin's formats and what tells them apart: layout by tensor names, LoRA markers.

Shared by detection (over a pickle scanned without data) and reading (over torch.load's
result), so both name the same thing the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from . import layouts

PREFIX = "_orig_mod."  # torch.compile's wrapper adds it to every key


@attrs.frozen
class Kind:
    """A format: its name, layout (key table), family and upstream description."""

    format: str
    layout: str
    family: str
    table: dict
    upstream: str


NANOGPT = Kind("nanogpt", "nanogpt", "gpt", layouts.NANOGPT, "nanoGPT ckpt.pt")
MODDED = Kind("modded-nanogpt", "qkv", "modded-gpt", layouts.MODDED_QKV, "modded-nanogpt state_step (qkv_w layout)")
MEDIUM = Kind("modded-nanogpt-medium", "qkvo", "modded-gpt", layouts.MODDED_QKVO,
              "modded-nanogpt medium state_step (qkvo_w layout)")
KINDS = {k.format: k for k in (NANOGPT, MODDED, MEDIUM)}
FAMILIES = {"gpt": NANOGPT, "modded-gpt": MODDED}


class Unsupported(Exception):
    """A layout variant this plugin recognises but does not read (it refuses rather than misreads)."""


LORA_KEY = r".*\.(main_weight|lora_A|lora_B)(\..*)?"  # the nanoGPT LoRA fork: the lora plugin's

# Variants that must not be misread as a known layout: (key pattern, what it is).
UNSUPPORTED = (
    (r"blocks\.\d+\.attn\.c_q\.weight", "the 2024-12 modded-nanogpt layout (c_q/c_k/c_v)"),
    (r"value_embeds\.embed\.\d+\.weight", "the 2025-01 modded-nanogpt value_embeds.embed layout"),
    (r"blocks\.\d+\.mlp\.c_fc", "a modded-nanogpt variant with a bare (transposed) mlp.c_fc parameter"),
    (r".*bank.*", "modded-nanogpt parameter banks (2026)"),
    (LORA_KEY, "a LoRA model (main_weight/lora_A/lora_B)"),
)


def strip_prefix(keys: Iterable[str]) -> tuple[str, list[str]]:
    """The ``_orig_mod.`` prefix if every key has it (else ""), and the keys without it."""
    keys = list(keys)
    if keys and all(k.startswith(PREFIX) for k in keys):
        return PREFIX, [k[len(PREFIX):] for k in keys]
    return "", keys


def kind_of(shapes: Mapping[str, tuple[int, ...]]) -> Kind | None:
    """The format whose layout these (prefix-free) tensor names and shapes are; None if
    none; Unsupported for a known variant this plugin does not read."""
    for pattern, what in UNSUPPORTED:
        if any(re.fullmatch(pattern, k) for k in shapes):
            raise Unsupported(what)
    for name, shape in shapes.items():
        if re.fullmatch(r"blocks\.\d+\.attn\.qkvo_w", name):
            if len(shape) != 3 or shape[0] != 4:
                raise Unsupported(f"a modded-nanogpt variant with qkvo_w stored as {list(shape)}")
            return MEDIUM
    if any(re.fullmatch(r"transformer\.h\.\d+\.attn\.c_attn\.weight", k) for k in shapes) or "transformer.wte.weight" in shapes:
        return NANOGPT
    if any(re.fullmatch(r"blocks\.\d+\.attn\.qkv_w", k) for k in shapes) or (
            "embed.weight" in shapes and any(k.startswith("blocks.") for k in shapes)):
        if "lm_head_w" in shapes or any(re.fullmatch(r"blocks\.\d+\.mlp\.fc_w", k) for k in shapes):
            return MEDIUM
        return MODDED
    return None


def is_lora(top: Mapping[str, Any]) -> bool:
    """The nanoGPT LoRA fork's ckpt.pt (the lora plugin's format): ``param_names``, or
    LoRA settings in ``model_args``."""
    args = top.get("model_args")
    return "param_names" in top or (isinstance(args, Mapping) and ("attn_lora_rank" in args or "embedding_mode" in args))
