"""The ``moshi`` family: Kyutai's Moshi LMModel, with the TTT variant's extra blocks.

Canonical names are moshi's own current state-dict names (``in_projs.{k}``, not the
legacy stacked ``in_proj_weight``), with the TTT variant's tensors per layer under
``transformer.layers.{i}.ttt.``: the TTT block (``W1``, ``wq.weight``, ...), the two
gates (``forward_gating_alpha``, ``backward_gating_alpha``) and ``ttt.original_layer.*``,
the second name of the layer's own tensors (a tie, see ``keys.py``). LoRA matrices saved
without their base weights (``lora.safetensors``) keep their names ``*.lora_A.weight`` /
``*.lora_B.weight``. ``{i}`` numbers the main transformer's layers; ``{j}`` the depformer's
layers and ``{k}`` codebooks and depformer steps.
"""

from __future__ import annotations

from ckpt_core import FamilySchema, TensorRule

L = "transformer.layers.{i}."
D = "depformer.layers.{j}."
T = L + "ttt."

LAYER = (
    TensorRule(L + "self_attn.in_projs.0.weight", ("3*dim", "dim")),
    TensorRule(L + "self_attn.out_projs.0.weight", ("dim", "dim")),
    TensorRule(L + "norm1.alpha", (1, 1, "dim"), required=False),  # rms_norm; layer_norm has weight/bias
    TensorRule(L + "norm2.alpha", (1, 1, "dim"), required=False),
    TensorRule(L + "norm1.weight", ("dim",), required=False),
    TensorRule(L + "norm1.bias", ("dim",), required=False),
    TensorRule(L + "norm2.weight", ("dim",), required=False),
    TensorRule(L + "norm2.bias", ("dim",), required=False),
    TensorRule(L + "layer_scale_1.scale", ("dim",), required=False),
    TensorRule(L + "layer_scale_2.scale", ("dim",), required=False),
    TensorRule(L + "gating.linear_in.weight", ("2*d_ff", "dim")),
    TensorRule(L + "gating.linear_out.weight", ("dim", "d_ff")),
)

TTT = (
    TensorRule(T + "W1", None, required=False),  # [H, D, 4D] (TTT-MLP) or [H, D, D] (TTT-Linear)
    TensorRule(T + "b1", None, required=False),
    TensorRule(T + "W2", None, required=False),
    TensorRule(T + "b2", None, required=False),
    *(TensorRule(T + f"{w}.weight", ("ttt_heads*ttt_head_dim", "dim"), required=False) for w in ("wq", "wk", "wv", "wo")),
    *(TensorRule(T + f"{w}.bias", ("ttt_heads*ttt_head_dim",), required=False) for w in ("wq", "wk", "wv", "wo")),
    TensorRule(T + "learnable_ttt_lr_weight", ("ttt_heads", 1, "dim"), required=False),
    TensorRule(T + "learnable_ttt_lr_bias", ("ttt_heads", 1), required=False),
    TensorRule(T + "ttt_norm_weight", ("ttt_heads", "ttt_head_dim"), required=False),
    TensorRule(T + "ttt_norm_bias", ("ttt_heads", "ttt_head_dim"), required=False),
    TensorRule(T + "post_norm.weight", ("dim",), required=False),
    TensorRule(T + "post_norm.bias", ("dim",), required=False),
    TensorRule(T + "forward_gating_alpha", ("dim",), required=False),
    TensorRule(T + "backward_gating_alpha", ("dim",), required=False),
)

# The second name a TTT layer gives its original layer's tensors.
ALIASES = tuple(TensorRule(T + "original_layer." + r.pattern[len(L):], r.shape, required=False) for r in LAYER)

TOP = (
    TensorRule("emb.{k}.weight", ("card+1", "dim")),
    TensorRule("text_emb.weight", ("text_card+1", "dim")),
    TensorRule("text_linear.weight", ("text_card", "dim")),
    TensorRule("out_norm.alpha", (1, 1, "dim"), required=False),
    TensorRule("out_norm.weight", ("dim",), required=False),
    TensorRule("out_norm.bias", ("dim",), required=False),
    TensorRule("depformer_in.{k}.weight", ("depformer_dim", "dim")),
    TensorRule("depformer_emb.{k}.weight", ("card+1", "depformer_dim"), required=False),  # none when dep_q is 1
    TensorRule("depformer_text_emb.weight", ("text_card+1", "depformer_dim")),
    TensorRule(D + "self_attn.in_projs.{k}.weight", ("3*depformer_dim", "depformer_dim")),
    TensorRule(D + "self_attn.out_projs.{k}.weight", ("depformer_dim", "depformer_dim")),
    TensorRule(D + "norm1.alpha", (1, 1, "depformer_dim"), required=False),
    TensorRule(D + "norm2.alpha", (1, 1, "depformer_dim"), required=False),
    TensorRule(D + "gating.{k}.linear_in.weight", ("2*depformer_d_ff", "depformer_dim"), required=False),
    TensorRule(D + "gating.{k}.linear_out.weight", ("depformer_dim", "depformer_d_ff"), required=False),
    TensorRule(D + "gating.linear_in.weight", ("2*depformer_d_ff", "depformer_dim"), required=False),
    TensorRule(D + "gating.linear_out.weight", ("depformer_dim", "depformer_d_ff"), required=False),
    TensorRule("linears.{k}.weight", ("card", "depformer_dim")),
)

_LINEARS = [r for r in (*TOP, *LAYER, *ALIASES) if r.pattern.endswith(".weight") and r.shape and len(r.shape) == 2
            and "emb" not in r.pattern]
# LoRA matrices stored without their base (adapters-only files).
LORA = tuple(TensorRule(r.pattern[:-len("weight")] + f"{m}.weight", None, required=False)
             for r in _LINEARS for m in ("lora_A", "lora_B"))

MOSHI = FamilySchema(
    name="moshi",
    description="Kyutai Moshi LMModel (transformer, depformer, embeddings) with optional TTT blocks",
    tensors=(*TOP, *LAYER, *TTT, *ALIASES, *LORA),
    derive={
        "dim": ("text_emb.weight", 1),
        "text_card": ("text_linear.weight", 0),
        "card": ("linears.{k}.weight", 0),
        "depformer_dim": ("depformer_in.{k}.weight", 0),
        "d_ff": (L + "gating.linear_out.weight", 1),
        "depformer_d_ff": (D + "gating.{k}.linear_out.weight", 1),
        "ttt_heads": (T + "learnable_ttt_lr_weight", 0),
        "ttt_head_dim": (T + "ttt_norm_weight", 1),
    },
)
