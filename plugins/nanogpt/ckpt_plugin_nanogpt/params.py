"""Hyper-parameters read off a checkpoint: what the file states, else what the tensors tell.

The reader and the writer share these functions: a writer stores the hyper-parameters a
reader would not find again (in the file's ``ckpt_core`` entry) and nothing else, so
upstream files round-trip without gaining a key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from ckpt_core.gpt import GPT

from .family import MODDED_GPT

# nanoGPT model_args names -> canonical hyper-parameter names (the others keep their name)
MODEL_ARGS = {"n_embd": "d_model"}
# the keys nanoGPT's train.py writes in model_args, in its order
MODEL_ARGS_KEYS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")
SCALARS_PER_LAYER = 5  # skip weight, 2 block lambdas, 2 attention lambdas


def gpt_params(shapes: Mapping[str, tuple[int, ...]], model_args: Mapping[str, Any] | None) -> dict[str, Any]:
    """nanoGPT: shapes give n_layer, vocab_size, d_model, block_size, d_ff and bias;
    ``model_args`` (n_head, dropout, ...) is added over them."""
    params = GPT.derive_params(shapes)
    params["bias"] = any(name.endswith(".ln_1.bias") for name in shapes)
    for key, value in (model_args or {}).items():
        params[MODEL_ARGS.get(key, key)] = value
    return params


def model_args(params: Mapping[str, Any], keys: list[str] | None = None) -> dict[str, Any]:
    """nanoGPT's ``model_args`` from canonical hyper-parameters (``keys``: those to write)."""
    names = keys if keys is not None else [k for k in MODEL_ARGS_KEYS if MODEL_ARGS.get(k, k) in params]
    return {k: params[MODEL_ARGS.get(k, k)] for k in names if MODEL_ARGS.get(k, k) in params}


def modded_params(shapes: Mapping[str, tuple[int, ...]], layout: str) -> dict[str, Any]:
    """modded-nanogpt: sizes from shapes, the value-embedding count, layers without
    attention, and the scalars' length (with its world-size padding in layout qkv)."""
    params = MODDED_GPT.derive_params(shapes)
    n_layer = params.get("n_layer", 0)
    params["n_value_embeds"] = sum(1 for name in shapes if re.fullmatch(r"value_embeds\.\d+\.weight", name))
    with_attention = {int(m.group(1)) for name in shapes if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.q\.weight", name))}
    params["layers_without_attention"] = [i for i in range(n_layer) if i not in with_attention]
    if "scalars" in shapes:
        numel = math.prod(shapes["scalars"])
        params["n_scalars"] = numel
        padding = numel - SCALARS_PER_LAYER * n_layer
        if layout == "qkv" and padding >= 0:
            params["scalars_padding"] = padding
    return params
