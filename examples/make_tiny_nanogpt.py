"""Write examples/tiny-nanogpt/ckpt.pt: a checkpoint laid out as karpathy/nanoGPT's train.py
saves one (reproducible), for the README's first conversion.

The model is examples/make_tiny_gpt.py's (2 layers, d_model 32, vocabulary 65, block 64,
with biases), its keys carry ``torch.compile``'s ``_orig_mod.`` prefix, ``wte`` and
``lm_head`` share one storage, and the AdamW state comes from one real optimizer step with
nanoGPT's two parameter groups. Run: python examples/make_tiny_nanogpt.py
"""

from pathlib import Path

import torch
from make_tiny_gpt import C, L, T, V, tiny_gpt


def checkpoint(seed: int = 0) -> dict:
    params = {k: torch.nn.Parameter(torch.from_numpy(v)) for k, v in tiny_gpt(seed).items() if k != "lm_head.weight"}
    decay = [p for p in params.values() if p.dim() >= 2]
    no_decay = [p for p in params.values() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=1e-3, betas=(0.9, 0.99))
    generator = torch.Generator().manual_seed(seed)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    optimizer.step()
    model = {"_orig_mod." + k: p.detach() for k, p in params.items()}
    model["_orig_mod.lm_head.weight"] = model["_orig_mod.transformer.wte.weight"]  # tied, as nanoGPT's GPT
    return {
        "model": model,
        "optimizer": optimizer.state_dict(),
        "model_args": {"n_layer": L, "n_head": 4, "n_embd": C, "block_size": T, "bias": True, "vocab_size": V, "dropout": 0.0},
        "iter_num": 1,
        "best_val_loss": torch.tensor(4.17),
        "config": {"dataset": "shakespeare_char", "batch_size": 12, "learning_rate": 1e-3, "compile": True},
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("tiny-nanogpt") / "ckpt.pt"
    out.parent.mkdir(exist_ok=True)
    torch.save(checkpoint(), out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
