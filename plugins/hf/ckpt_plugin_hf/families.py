"""The families of Hugging Face model directories, as data: which ``model_type`` is which
canonical family, and each family's tensors.

Decoders (``llama``, ``qwen2``, ``qwen3``; Mistral is the ``llama`` family: the same
tensors, its own ``model_type`` and architecture kept in config.json): canonical names are
the Hugging Face state-dict names (``model.layers.{i}.self_attn.q_proj.weight`` ...):
transformers already keeps q, k, v and o apart and stores linear weights as [out, in], so
they are canonical as they are. Qwen2 always has q/k/v biases, Qwen3 has per-head
``q_norm`` / ``k_norm`` and no biases unless ``attention_bias``. ``lm_head.weight`` is a tie
to ``model.embed_tokens.weight`` when ``tie_word_embeddings`` is set.

GPT-2 is the core's ``gpt`` family (nanoGPT's names, which are GPT-2's): ``GPT2_CONV1D`` lists the
four ``Conv1D`` weights GPT-2 stores [in, out], transposed exactly on the way in and out.

Another distribution may add optional tensors to a decoder family (SwiftKV's ``*_swiftkv``
copies): an entry point in group ``ckpt_plugin_hf.tensors``, named as that distribution's
``ckpt_core`` plugin, naming a function ``(family, {pattern: shape}) -> [TensorRule, ...]``.
It is used when that plugin is (``CKPT_CORE_PLUGINS`` selects plugins); a broken one is
skipped with a warning.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import warnings

from ckpt_core import CkptWarning, FamilySchema, TensorRule
from ckpt_core.plugins import ENV_VAR

L = "model.layers.{i}."
Q, KV = "n_head*head_dim", "n_kv_head*head_dim"
EXTENSIONS = "ckpt_plugin_hf.tensors"

# model_type -> (canonical family, architecture transformers builds)
MODEL_TYPES = {
    "gpt2": ("gpt", "GPT2LMHeadModel"),
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("llama", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
}
DECODERS = ("llama", "qwen2", "qwen3")  # the columns of DECODER below

# (pattern, shape, required in llama, qwen2, qwen3)
DECODER = [
    ("model.embed_tokens.weight", ("vocab_size", "d_model"), (True, True, True)),
    (L + "self_attn.q_proj.weight", (Q, "d_model"), (True, True, True)),
    (L + "self_attn.q_proj.bias", (Q,), (False, True, False)),
    (L + "self_attn.k_proj.weight", (KV, "d_model"), (True, True, True)),
    (L + "self_attn.k_proj.bias", (KV,), (False, True, False)),
    (L + "self_attn.v_proj.weight", (KV, "d_model"), (True, True, True)),
    (L + "self_attn.v_proj.bias", (KV,), (False, True, False)),
    (L + "self_attn.o_proj.weight", ("d_model", Q), (True, True, True)),
    (L + "self_attn.o_proj.bias", ("d_model",), (False, None, False)),
    (L + "self_attn.q_norm.weight", ("head_dim",), (None, None, True)),
    (L + "self_attn.k_norm.weight", ("head_dim",), (None, None, True)),
    (L + "self_attn.rotary_emb.inv_freq", None, (False, False, False)),  # a buffer older exports kept
    (L + "mlp.gate_proj.weight", ("d_ff", "d_model"), (True, True, True)),
    (L + "mlp.up_proj.weight", ("d_ff", "d_model"), (True, True, True)),
    (L + "mlp.down_proj.weight", ("d_model", "d_ff"), (True, True, True)),
    (L + "mlp.gate_proj.bias", ("d_ff",), (False, None, None)),
    (L + "mlp.up_proj.bias", ("d_ff",), (False, None, None)),
    (L + "mlp.down_proj.bias", ("d_model",), (False, None, None)),
    (L + "input_layernorm.weight", ("d_model",), (True, True, True)),
    (L + "post_attention_layernorm.weight", ("d_model",), (True, True, True)),
    ("model.norm.weight", ("d_model",), (True, True, True)),
    ("lm_head.weight", ("vocab_size", "d_model"), (True, True, True)),
]  # required: True / False (optional) / None (the family has no such tensor)

# decoder config.json key <- canonical hyper-parameter
DECODER_CONFIG = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "d_model": "hidden_size",
    "d_ff": "intermediate_size",
    "head_dim": "head_dim",
}
DESCRIPTIONS = {
    "llama": "Llama / Mistral decoder (HF names): RMSNorm, rotary, GQA, SwiGLU MLP; optional biases",
    "qwen2": "Qwen2 decoder (HF names): Llama with q/k/v biases",
    "qwen3": "Qwen3 decoder (HF names): Llama with per-head q_norm/k_norm",
}

# GPT-2 (``gpt`` family): the Conv1D weights, stored [in, out] by GPT2LMHeadModel
H = "transformer.h.{i}."
GPT2_CONV1D = (H + "attn.c_attn.weight", H + "attn.c_proj.weight", H + "mlp.c_fc.weight", H + "mlp.c_proj.weight")
# GPT-2 config.json key <- canonical hyper-parameter (n_ctx is n_positions again)
GPT2_CONFIG = {
    "vocab_size": "vocab_size",
    "n_layer": "n_layer",
    "n_head": "n_head",
    "d_model": "n_embd",
    "block_size": "n_positions",
}


def family_of_model_type(model_type) -> str | None:
    """The canonical family of a config's ``model_type`` (None for any other model)."""
    found = MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    return found[0] if found else None


def decoder_rules(family: str) -> list[TensorRule]:
    """The decoder family's own tensor rules (without other distributions' additions)."""
    column = DECODERS.index(family)
    return [TensorRule(p, shape, required=req[column]) for p, shape, req in DECODER if req[column] is not None]


def _extensions(family: str, rules: list[TensorRule]) -> list[TensorRule]:
    """Other distributions' optional tensors for ``family`` (group ``EXTENSIONS``)."""
    shapes = {r.pattern: r.shape for r in rules}
    selected = os.environ.get(ENV_VAR)
    added: list[TensorRule] = []
    for ep in sorted(importlib.metadata.entry_points(group=EXTENSIONS), key=lambda e: e.name):
        if selected is not None and ep.name not in {n.strip() for n in selected.split(",")}:
            continue
        try:
            added += [TensorRule(r.pattern, r.shape, required=False) for r in ep.load()(family, dict(shapes))]
        except Exception as e:  # another distribution's bug must not break this format
            warnings.warn(f"hf tensor extension {ep.name!r} skipped: {type(e).__name__}: {e}", CkptWarning, stacklevel=2)
    return added


def schema(family: str, extended: bool = True) -> FamilySchema:
    """A decoder family's schema: its own tensors, and others' additions when ``extended``
    (what is registered: a SwiftKV student is a valid checkpoint of its teacher's family)."""
    rules = decoder_rules(family)
    if extended:
        rules += _extensions(family, rules)
    derive = {"vocab_size": ("model.embed_tokens.weight", 0), "d_model": ("model.embed_tokens.weight", 1),
              "d_ff": (L + "mlp.gate_proj.weight", 0)}
    if family == "qwen3":
        derive["head_dim"] = (L + "self_attn.q_norm.weight", 0)
    return FamilySchema(family, DESCRIPTIONS[family], tuple(rules), derive)


@functools.cache
def own_schema(family: str) -> FamilySchema:
    """``family`` as this plugin alone has it: what an HF directory of it holds."""
    if family == "gpt":
        from ckpt_core.gpt import GPT

        return GPT
    return schema(family, extended=False)
