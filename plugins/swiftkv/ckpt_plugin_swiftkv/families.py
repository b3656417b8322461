"""The ``llama``, ``qwen2`` and ``qwen3`` families, as data, with their SwiftKV extras.

Canonical names are the Hugging Face state-dict names (``model.layers.{i}.self_attn.q_proj.weight``
...): transformers already keeps q, k, v and o apart and stores linear weights as [out, in],
so they are canonical as they are. The three differ only in which tensors are required:
Qwen2 always has q/k/v biases, Qwen3 has per-head ``q_norm`` / ``k_norm`` and no biases
unless ``attention_bias``. ``lm_head.weight`` is a tie to ``model.embed_tokens.weight`` when
``tie_word_embeddings`` is set.

A SwiftKV student is its teacher plus ``*_swiftkv`` tensors (see ``swiftkv.py``), so each
family also lists those, optional, with the shape of the teacher tensor each starts as.
``TEACHERS`` are the same families without them (what the ``hf`` format holds).
"""

from __future__ import annotations

from ckpt_core import FamilySchema, TensorRule

L = "model.layers.{i}."
Q, KV = "n_head*head_dim", "n_kv_head*head_dim"

# (pattern, shape, required in llama, qwen2, qwen3)
RULES = [
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

# SwiftKV tensor -> the teacher tensor it starts as (per layer, relative to ``L``), and
# its role: which layers get it in each variant (swiftkv.py). ``model.norm_swiftkv``
# starts as the first SwiftKV layer's ``input_layernorm``.
SWIFTKV_TENSORS = {
    "self_attn.q_proj_swiftkv.weight": ("self_attn.q_proj.weight", "query"),
    "self_attn.q_proj_swiftkv.bias": ("self_attn.q_proj.bias", "query"),
    "self_attn.q_norm_swiftkv.weight": ("self_attn.q_norm.weight", "query"),
    "self_attn.k_proj_swiftkv.weight": ("self_attn.k_proj.weight", "kv"),
    "self_attn.k_proj_swiftkv.bias": ("self_attn.k_proj.bias", "kv"),
    "self_attn.v_proj_swiftkv.weight": ("self_attn.v_proj.weight", "kv"),
    "self_attn.v_proj_swiftkv.bias": ("self_attn.v_proj.bias", "kv"),
    "self_attn.k_norm_swiftkv.weight": ("self_attn.k_norm.weight", "kv"),
    "mlp.gate_proj_swiftkv.weight": ("mlp.gate_proj.weight", "mlp"),
    "mlp.up_proj_swiftkv.weight": ("mlp.up_proj.weight", "mlp"),
    "mlp.down_proj_swiftkv.weight": ("mlp.down_proj.weight", "mlp"),
    "input_layernorm_swiftkv.weight": ("input_layernorm.weight", "layernorm"),
    "post_attention_layernorm_swiftkv.weight": ("post_attention_layernorm.weight", "layernorm"),
}
NORM_SWIFTKV = "model.norm_swiftkv.weight"
NORM_SWIFTKV_SOURCE = L + "input_layernorm.weight"

# canonical hyper-parameter -> config.json key
CONFIG_KEYS = {
    "vocab_size": "vocab_size",
    "n_layer": "num_hidden_layers",
    "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads",
    "d_model": "hidden_size",
    "d_ff": "intermediate_size",
    "head_dim": "head_dim",
}

# family -> (teacher model_type, teacher architecture, SwiftKV architecture)
MODEL_TYPES = {
    "llama": ("llama", "LlamaForCausalLM", "LlamaSwiftKVForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", "Qwen2SwiftKVForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", "Qwen3SwiftKVForCausalLM"),
}
DESCRIPTIONS = {
    "llama": "Llama decoder (HF names): RMSNorm, rotary, GQA, SwiGLU MLP; optional biases and SwiftKV extras",
    "qwen2": "Qwen2 decoder (HF names): Llama with q/k/v biases; optional SwiftKV extras",
    "qwen3": "Qwen3 decoder (HF names): Llama with per-head q_norm/k_norm; optional SwiftKV extras",
}


def _schema(family: str, swiftkv: bool) -> FamilySchema:
    column = list(MODEL_TYPES).index(family)
    rules = [TensorRule(p, shape, required=req[column]) for p, shape, req in RULES if req[column] is not None]
    if swiftkv:
        shapes = {r.pattern: r.shape for r in rules}
        rules += [TensorRule(L + name, shapes[L + source], required=False)
                  for name, (source, _) in SWIFTKV_TENSORS.items() if L + source in shapes]
        rules.append(TensorRule(NORM_SWIFTKV, ("d_model",), required=False))
    derive = {"vocab_size": ("model.embed_tokens.weight", 0), "d_model": ("model.embed_tokens.weight", 1),
              "d_ff": (L + "mlp.gate_proj.weight", 0)}
    if family == "qwen3":
        derive["head_dim"] = (L + "self_attn.q_norm.weight", 0)
    return FamilySchema(family, DESCRIPTIONS[family], tuple(rules), derive)


FAMILIES = {name: _schema(name, swiftkv=True) for name in MODEL_TYPES}
TEACHERS = {name: _schema(name, swiftkv=False) for name in MODEL_TYPES}


def family_of_model_type(model_type) -> tuple[str, bool] | None:
    """(family, is SwiftKV) for a config's ``model_type``; None for any other model."""
    if not isinstance(model_type, str):
        return None
    base = model_type.removesuffix("_swiftkv")
    return (base, base != model_type) if base in MODEL_TYPES else None


def family_of_names(names) -> str:
    """The family tensor names alone suggest (no config.json, as in DeepSpeed states)."""
    names = set(names)
    if any(n.endswith("self_attn.q_norm.weight") for n in names):
        return "qwen3"
    if any(n.endswith("self_attn.q_proj.bias") for n in names) and not any(n.endswith("o_proj.bias") for n in names):
        return "qwen2"
    return "llama"
