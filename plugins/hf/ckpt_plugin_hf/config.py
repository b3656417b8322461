"""config.json <-> the canonical checkpoint: what is derived, what is carried.

The writer derives config.json from canonical facts: ``model_type`` and ``architectures``
from the family, the hyper-parameters (``DECODER_CONFIG`` / ``GPT2_CONFIG``),
``tie_word_embeddings`` from the tie, ``dtype`` (and an older file's ``torch_dtype``) from
the embedding's dtype (so a cast checkpoint loads as what it is), and any other
hyper-parameter under ``ckpt_core_arch``. For GPT-2 it also states what makes transformers
compute what nanoGPT computes: ``activation_function`` "gelu" (nanoGPT's exact GELU; a
GPT-2 read with another keeps it as the hyper-parameter ``activation_function``), LayerNorm
eps 1e-5, ``n_ctx`` = ``n_positions``, ``n_inner`` when the MLP is not 4 x wide, the
dropouts from ``dropout``, and bos/eos ``<|endoftext|>`` only when the vocabulary has it. The reader keeps, in the checkpoint's ``extra``, exactly the
fields whose value differs from what would be derived (sorted by key), so that writing them
over the derived ones gives the same config back, and a checkpoint that never had a
config.json gains none in ``extra``.
"""

from __future__ import annotations

import json
from typing import Any

from ckpt_core import Checkpoint, LossyConversion, tree
from ckpt_core.torchfile import TORCH_DTYPES

from .families import DECODER_CONFIG, GPT2_CONFIG, MODEL_TYPES

ARCH_KEY = "ckpt_core_arch"
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
WTE = "transformer.wte.weight"
TIES = {"gpt": {LM_HEAD: WTE}}  # the one tie a directory can state (tie_word_embeddings)
DEFAULT_TIE = {LM_HEAD: EMBED}
GPT2_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")
ENDOFTEXT = 50256  # GPT-2's <|endoftext|>: bos and eos when the vocabulary has it


def tie_of(family: str) -> dict[str, str]:
    return TIES.get(family, DEFAULT_TIE)


def keys_of(family: str) -> dict[str, str]:
    return GPT2_CONFIG if family == "gpt" else DECODER_CONFIG


def params_from_config(config: dict, family: str) -> dict[str, Any]:
    """Canonical hyper-parameters stated by a config.json."""
    params = {canon: config[key] for canon, key in keys_of(family).items() if key in config}
    if family == "gpt":
        if config.get("activation_function", "gelu_new") != "gelu":
            params["activation_function"] = config.get("activation_function", "gelu_new")
        if "resid_pdrop" in config:
            params["dropout"] = config["resid_pdrop"]
    if isinstance(config.get(ARCH_KEY), (dict, list)):
        params.update(tree.decode(config[ARCH_KEY], {}))
    return ordered(params, family)


def ordered(params: dict[str, Any], family: str, first: tuple[str, ...] = ()) -> dict[str, Any]:
    """Hyper-parameters in one order (config.json has its own): the config keys, then
    ``first``, then the rest by name."""
    rank = {name: i for i, name in enumerate([*keys_of(family), *first])}
    return dict(sorted(params.items(), key=lambda kv: (rank.get(kv[0], len(rank)), str(kv[0]))))


def derived(ck: Checkpoint, consumed: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config.json fields that follow from ``ck``; hyper-parameters in ``consumed`` are
    stated by the caller's own fields, not under ``ckpt_core_arch``."""
    family = ck.arch.family
    model_type = next(t for t, (f, _) in MODEL_TYPES.items() if f == family)
    out: dict[str, Any] = {
        "model_type": model_type,
        "architectures": [MODEL_TYPES[model_type][1]],
        "tie_word_embeddings": ck.ties == tie_of(family),
    }
    embed = WTE if family == "gpt" else EMBED
    weights = ck.tensors.get(embed) or next(iter(ck.tensors.values()), None)
    if weights is not None:
        out["dtype"] = TORCH_DTYPES[weights.dtype]
    params = {k: v for k, v in ck.arch.params.items() if k not in consumed}
    for canon, key in keys_of(family).items():
        if canon in params:
            out[key] = params.pop(canon)
    if family == "gpt":
        out.update(_gpt2(out, params))
    if params:
        encoded, tensors = tree.encode(params)
        if tensors:
            raise LossyConversion(f"hyper-parameters hold tensors ({', '.join(tensors)}), which config.json cannot keep; "
                                  "convert to canonical instead. Nothing was written.")
        out[ARCH_KEY] = encoded
    return out


def _gpt2(out: dict, params: dict) -> dict[str, Any]:
    """GPT-2's fields beyond the sizes (takes what it states out of ``params``)."""
    fields: dict[str, Any] = {"activation_function": params.pop("activation_function", "gelu"),
                              "layer_norm_epsilon": 1e-5, "scale_attn_weights": True}
    if "n_positions" in out:
        fields["n_ctx"] = out["n_positions"]
    d_ff = params.pop("d_ff", None)
    fields["n_inner"] = None if d_ff is None or d_ff == 4 * out.get("n_embd", -1) else d_ff
    dropout = params.pop("dropout", 0.0)
    fields.update(dict.fromkeys(GPT2_DROPOUTS, dropout))
    vocab = out.get("vocab_size")
    fields.update(dict.fromkeys(("bos_token_id", "eos_token_id"),
                                ENDOFTEXT if isinstance(vocab, int) and vocab > ENDOFTEXT else None))
    params.pop("bias", None)  # GPT-2 always has biases: nanoGPT's bias=False gets zeros (gpt2.py)
    return fields


def carried(config: dict, derived_fields: dict) -> dict[str, Any]:
    """The fields of ``config`` that ``derived_fields`` does not reproduce, sorted by key."""
    return {k: v for k, v in sorted(config.items()) if k not in derived_fields or not _same(v, derived_fields[k])}


def build(derived_fields: dict, carried_fields: dict) -> dict:
    """config.json: carried fields over derived ones (``dtype`` and ``torch_dtype`` always
    the derived dtype)."""
    config = {**derived_fields, **carried_fields}
    if "torch_dtype" in config and "dtype" in derived_fields:
        config["torch_dtype"] = config["dtype"] = derived_fields["dtype"]
    return config


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
