"""The ``gpt`` family (karpathy/nanoGPT), shared by the nanogpt and lora plugins.

Canonical names are nanoGPT's own state-dict names without the ``_orig_mod.`` prefix.
``c_attn`` stays fused ([3*d_model, d_model], rows q, k, v): it is nanoGPT's (and HF
GPT-2's) own name and LoRA adapters attach to it as one base tensor; splitting q, k, v is
a reshape a consumer does with ``Tensor.split(0, [d, d, d])``. Linear weights are
[out, in]. ``lm_head.weight`` is normally a tie to ``transformer.wte.weight``.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .schema import FamilySchema, TensorRule

H = "transformer.h.{i}."

GPT = FamilySchema(
    name="gpt",
    description="nanoGPT / GPT-2 decoder: learned positions, LayerNorm, fused c_attn, GELU MLP",
    tensors=(
        TensorRule("transformer.wte.weight", ("vocab_size", "d_model")),
        TensorRule("transformer.wpe.weight", ("block_size", "d_model"), required=False),
        TensorRule(H + "ln_1.weight", ("d_model",)),
        TensorRule(H + "ln_1.bias", ("d_model",), required=False),
        TensorRule(H + "attn.c_attn.weight", ("3*d_model", "d_model")),
        TensorRule(H + "attn.c_attn.bias", ("3*d_model",), required=False),
        TensorRule(H + "attn.c_proj.weight", ("d_model", "d_model")),
        TensorRule(H + "attn.c_proj.bias", ("d_model",), required=False),
        TensorRule(H + "attn.bias", (1, 1, "block_size", "block_size"), required=False),  # causal mask buffer
        TensorRule(H + "attn.rotary_emb.inv_freq", None, required=False),  # rotary variants (LoRA fork)
        TensorRule(H + "ln_2.weight", ("d_model",)),
        TensorRule(H + "ln_2.bias", ("d_model",), required=False),
        TensorRule(H + "mlp.c_fc.weight", ("d_ff", "d_model")),
        TensorRule(H + "mlp.c_fc.bias", ("d_ff",), required=False),
        TensorRule(H + "mlp.c_proj.weight", ("d_model", "d_ff")),
        TensorRule(H + "mlp.c_proj.bias", ("d_model",), required=False),
        TensorRule("transformer.ln_f.weight", ("d_model",)),
        TensorRule("transformer.ln_f.bias", ("d_model",), required=False),
        TensorRule("lm_head.weight", ("vocab_size", "d_model")),
    ),
    derive={
        "vocab_size": ("transformer.wte.weight", 0),
        "d_model": ("transformer.wte.weight", 1),
        "block_size": ("transformer.wpe.weight", 0),
        "d_ff": (H + "mlp.c_fc.weight", 0),
    },
)


def adamw_param_order(parameters: list[tuple[str, int]]) -> list[str]:
    """The parameter names in the positional order of nanoGPT's AdamW state.

    ``parameters`` is ``model.named_parameters()`` as (name, ndim) pairs, in registration
    order, each shared parameter once (a tied ``lm_head.weight`` is not listed) and only
    those that require grad. ``configure_optimizers`` puts every tensor of 2 or more
    dimensions in group 0 (weight decay) and the rest in group 1, each in that order; the
    optimizer numbers its state 0, 1, 2, ... across the groups.
    """
    return [n for n, ndim in parameters if ndim >= 2] + [n for n, ndim in parameters if ndim < 2]


@hookimpl
def ckpt_families():
    return [GPT]
