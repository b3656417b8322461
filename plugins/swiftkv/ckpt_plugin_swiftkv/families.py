"""SwiftKV's additions to the Hugging Face decoder families, as data: the ``*_swiftkv``
tensors a student has beside its teacher's, and the students' model types.

The families themselves (``llama``, ``qwen2``, ``qwen3``: HF names, [out, in]) are
ckpt-plugin-hf's. A student is its teacher plus ``*_swiftkv`` tensors (see ``swiftkv.py``),
each optional, with the shape of the teacher tensor it starts as: ``hf_tensors`` gives them
to ckpt-plugin-hf (entry point group ``ckpt_plugin_hf.tensors``), so a student is a valid
checkpoint of its teacher's family.
"""

from __future__ import annotations

from ckpt_core import TensorRule
from ckpt_plugin_hf import LAYER as L

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

# family -> (student model_type, SwiftKV architecture)
STUDENTS = {
    "llama": ("llama_swiftkv", "LlamaSwiftKVForCausalLM"),
    "qwen2": ("qwen2_swiftkv", "Qwen2SwiftKVForCausalLM"),
    "qwen3": ("qwen3_swiftkv", "Qwen3SwiftKVForCausalLM"),
}


def hf_tensors(family: str, shapes: dict) -> list[TensorRule]:
    """The SwiftKV tensors a ``family`` model may have (``shapes``: its own tensors')."""
    if family not in STUDENTS:
        return []
    rules = [TensorRule(L + name, shapes[L + source]) for name, (source, _) in SWIFTKV_TENSORS.items()
             if L + source in shapes]
    return [*rules, TensorRule(NORM_SWIFTKV, ("d_model",))]


def family_of_model_type(model_type) -> tuple[str, bool] | None:
    """(family, is SwiftKV) for a config's ``model_type``; None for any other model."""
    if not isinstance(model_type, str):
        return None
    base = model_type.removesuffix("_swiftkv")
    return (base, base != model_type) if base in STUDENTS else None


def family_of_names(names) -> str:
    """The family tensor names alone suggest (no config.json, as in DeepSpeed states)."""
    names = set(names)
    if any(n.endswith("self_attn.q_norm.weight") for n in names):
        return "qwen3"
    if any(n.endswith("self_attn.q_proj.bias") for n in names) and not any(n.endswith("o_proj.bias") for n in names):
        return "qwen2"
    return "llama"
