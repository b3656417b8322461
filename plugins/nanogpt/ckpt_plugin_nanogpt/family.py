"""The ``modded-gpt`` family (KellerJordan/modded-nanogpt), defined by this plugin.

modded-nanogpt has no norm weights (parameter-free RMSNorm), no position embeddings
(rotary), a relu^2 MLP, value embeddings and learned skip/lambda scalars. Canonical names
keep q, k, v and o apart (``qkv_w`` / ``qkvo_w`` are fused layouts of them); linear
weights are [out, in]; ``scalars`` stays one tensor with its world-size padding, byte-exact.
Layers without attention simply have no ``attn`` tensors. The embeddings and the output
head each keep their own row count (50257 vs 50304 in some eras).
"""

from __future__ import annotations

from ckpt_core.schema import FamilySchema, TensorRule

B = "blocks.{i}."

MODDED_GPT = FamilySchema(
    name="modded-gpt",
    description="modded-nanogpt: no norm weights, rotary, relu^2 MLP, value embeddings, skip/lambda scalars",
    tensors=(
        TensorRule("embed.weight", ("vocab_size", "d_model")),
        TensorRule("value_embeds.{j}.weight", ("vocab_size", "d_model"), required=False),
        TensorRule(B + "lambdas", (2,), required=False),  # before 2025-07, then inside scalars
        TensorRule(B + "attn.q.weight", ("d_attn", "d_model"), required=False),
        TensorRule(B + "attn.k.weight", ("d_attn", "d_model"), required=False),
        TensorRule(B + "attn.v.weight", ("d_attn", "d_model"), required=False),
        TensorRule(B + "attn.o.weight", ("d_model", "d_attn"), required=False),
        TensorRule(B + "attn.lambdas", (2,), required=False),  # before 2025-07
        TensorRule(B + "mlp.fc.weight", ("d_ff", "d_model")),
        TensorRule(B + "mlp.proj.weight", ("d_model", "d_ff")),
        TensorRule("lm_head.weight", ("padded_vocab_size", "d_model")),
        TensorRule("scalars", None, required=False),
        TensorRule("skip_weights", None, required=False),  # before 2025-07
    ),
    derive={
        "vocab_size": ("embed.weight", 0),
        "d_model": ("embed.weight", 1),
        "d_attn": (B + "attn.q.weight", 0),
        "d_ff": (B + "mlp.fc.weight", 0),
        "padded_vocab_size": ("lm_head.weight", 0),
    },
)
