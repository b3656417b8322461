"""Small real MLX models and the seed's way of saving a training step, for the mlx plugin's tests.

``save_step`` writes what the seed's training script writes (the weights as
``tree_flatten(model.parameters())``, ``{"step", "epoch", "metrics"}`` as JSON) plus, when
given, the optimizer's state the way the format note's next steps describe it.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_flatten


class Nested(nn.Module):
    """An embedding, blocks of nested lists of layers, and a norm: ``blocks.1.mlp.0.weight``."""

    def __init__(self, vocab: int = 16, d: int = 16, n_blocks: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = [{"mlp": [nn.Linear(d, 2 * d), nn.Linear(2 * d, d)], "norm": nn.RMSNorm(d)} for _ in range(n_blocks)]
        self.heads = [[nn.Linear(d, vocab, bias=False)]]

    def __call__(self, tokens):
        x = self.embed(tokens)
        for block in self.blocks:
            up, down = block["mlp"]
            x = x + down(nn.gelu(up(block["norm"](x))))
        return self.heads[0][0](x)


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.attn = {"c_attn": nn.Linear(d, 3 * d), "c_proj": nn.Linear(d, d)}
        self.ln_2 = nn.LayerNorm(d)
        self.mlp = {"c_fc": nn.Linear(d, 4 * d), "c_proj": nn.Linear(4 * d, d)}

    def __call__(self, x):
        h = self.ln_1(x)
        q, k, v = mx.split(self.attn["c_attn"](h), 3, axis=-1)
        mask = nn.MultiHeadAttention.create_additive_causal_mask(x.shape[1])
        att = mx.softmax(q @ k.swapaxes(-1, -2) / (q.shape[-1] ** 0.5) + mask, axis=-1)
        x = x + self.attn["c_proj"](att @ v)
        return x + self.mlp["c_proj"](nn.gelu(self.mlp["c_fc"](self.ln_2(x))))


class GPT(nn.Module):
    """An MLX port of nanoGPT with nanoGPT's parameter names (one attention head)."""

    def __init__(self, vocab: int = 32, block_size: int = 8, d: int = 16, n_layer: int = 2):
        super().__init__()
        self.transformer = {"wte": nn.Embedding(vocab, d), "wpe": nn.Embedding(block_size, d),
                            "h": [Block(d) for _ in range(n_layer)], "ln_f": nn.LayerNorm(d)}
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def __call__(self, tokens):
        t = self.transformer
        x = t["wte"](tokens) + t["wpe"](mx.arange(tokens.shape[1]))
        for block in t["h"]:
            x = block(x)
        return self.lm_head(t["ln_f"](x))


def batch(step: int, vocab: int = 16, length: int = 8):
    """A deterministic batch of token ids and targets for ``step``."""
    tokens = mx.random.randint(0, vocab, (2, length + 1), key=mx.random.key(step))
    return tokens[:, :-1], tokens[:, 1:]


def loss_fn(model, x, y):
    return nn.losses.cross_entropy(model(x), y).mean()


def train(model, optimizer, steps: range, vocab: int = 16) -> float:
    """Run real update steps; return the last loss."""
    step_fn = nn.value_and_grad(model, loss_fn)
    loss = None
    for step in steps:
        x, y = batch(step, vocab)
        loss, grads = step_fn(model, x, y)
        optimizer.update(model, grads)
        mx.eval(model.parameters(), optimizer.state)
    return loss.item()


SCHEDULE = {"name": "cosine_decay", "init": 1e-2, "decay_steps": 50}


def make_optimizer(schedule: dict = SCHEDULE):
    """AdamW on a schedule described by ``schedule`` (the JSON a training script keeps as
    its scheduler state): its state has step, learning_rate, and m, v per parameter."""
    make = getattr(optim, schedule["name"])
    return optim.AdamW(learning_rate=make(schedule["init"], schedule["decay_steps"]), weight_decay=0.01)


def save_step(run_dir: Path, step: int, epoch: int, model, optimizer=None, metrics: dict | None = None,
              scheduler: dict | None = None) -> Path:
    """Save one step as the seed does (plus the optimizer file and scheduler state, when given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = run_dir / f"step_{step:06d}"
    mx.save_safetensors(f"{stem}.safetensors", dict(tree_flatten(model.parameters())))
    if optimizer is not None:
        mx.save_safetensors(f"{stem}_optimizer.safetensors", dict(tree_flatten(optimizer.state)))
    state = {"step": step, "epoch": epoch, "metrics": metrics or {"train_loss": 1.5, "val_loss": 1.75}}
    if scheduler is not None:
        state["scheduler"] = scheduler
    Path(f"{stem}_state.json").write_text(json.dumps(state))
    return Path(f"{stem}.safetensors")
