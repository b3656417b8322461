"""Reference modules mirroring the nanoGPT LoRA fork (key names and shapes as its note says).

A nanoGPT whose ``c_attn`` is a ``LoRALinear`` (``main_weight`` + ``lora_A`` / ``lora_B``)
and whose ``wte`` is a ``LoRAEmbedding`` (``lora_A`` an embedding table [V, r], ``lora_B``
[C, r]), the output head tied to ``wte.main_weight.weight``, the causal-mask buffer always
registered. ``save_lora`` and ``save_universal`` write ``ckpt.pt`` the two ways the fork
does; ``universal_state_dict`` is the fork's merge with its defects (the head keeps the
unmerged weight, rank-0 layers lose theirs).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


@dataclass
class LoRAConfig:
    block_size: int = 16
    vocab_size: int = 48
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    n_hidden: int = 128
    dropout: float = 0.0
    bias: bool = False
    use_rotary_embeddings: bool = False
    rotary_base: int = 10000
    rotary_max_position_embeddings: int = 16
    embedding_mode: str = "lora"  # "default", "lora" or "lora_only"
    embedding_rank: int = 4
    attn_lora_rank: int = 4
    lora_alpha: float = 8.0


class LoRALinear(nn.Module):
    def __init__(self, in_features, out_features, rank, alpha, bias):
        super().__init__()
        self.main_weight = nn.Linear(in_features, out_features, bias=bias)
        self.rank, self.alpha = rank, alpha
        if rank > 0:
            self.lora_A = nn.Linear(in_features, rank, bias=False)
            self.lora_B = nn.Linear(rank, out_features, bias=False)
            nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B.weight)

    def delta(self):
        return (self.lora_B.weight @ self.lora_A.weight) * (self.alpha / self.rank)

    def forward(self, x):
        y = self.main_weight(x)
        if self.rank > 0:
            y = y + self.lora_B(self.lora_A(x)) * (self.alpha / self.rank)
        return y


class LoRAEmbedding(nn.Module):
    def __init__(self, num, dim, rank, alpha, lora_only=False):
        super().__init__()
        if not lora_only:
            self.main_weight = nn.Embedding(num, dim)
        self.rank, self.alpha = rank, alpha
        self.lora_A = nn.Embedding(num, rank)
        self.lora_B = nn.Linear(rank, dim, bias=False)
        nn.init.normal_(self.lora_A.weight)
        nn.init.zeros_(self.lora_B.weight)

    def delta(self):
        return (self.lora_A.weight @ self.lora_B.weight.T) * (self.alpha / self.rank)

    def forward(self, idx):
        e = self.lora_B(self.lora_A(idx)) * (self.alpha / self.rank)
        return e + self.main_weight(idx) if hasattr(self, "main_weight") else e


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class Rotary(nn.Module):
    """Rotary position embeddings with the fork's persistent ``inv_freq`` buffer."""

    def __init__(self, dim, base):
        super().__init__()
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim)))

    def forward(self, x):  # x: [B, H, T, D]
        t = torch.arange(x.size(2), dtype=self.inv_freq.dtype)
        freqs = torch.outer(t, self.inv_freq)
        cos, sin = freqs.cos(), freqs.sin()
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, c: LoRAConfig, rank: int):
        super().__init__()
        if c.attn_lora_rank > 0:  # a layer resized to rank 0 keeps its LoRALinear, without adapters
            self.c_attn = LoRALinear(c.n_embd, 3 * c.n_embd, rank, c.lora_alpha, c.bias)
        else:
            self.c_attn = nn.Linear(c.n_embd, 3 * c.n_embd, bias=c.bias)
        self.c_proj = nn.Linear(c.n_embd, c.n_embd, bias=c.bias)
        self.n_head = c.n_head
        if c.use_rotary_embeddings:
            self.rotary_emb = Rotary(c.n_embd // c.n_head, c.rotary_base)
        # the fork always registers the mask buffer
        self.register_buffer("bias", torch.tril(torch.ones(c.block_size, c.block_size)).view(1, 1, c.block_size, c.block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if hasattr(self, "rotary_emb"):
            q, k = self.rotary_emb(q), self.rotary_emb(k)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        return self.c_proj((att @ v).transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, c: LoRAConfig):
        super().__init__()
        self.c_fc = nn.Linear(c.n_embd, c.n_hidden, bias=c.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(c.n_hidden, c.n_embd, bias=c.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, c: LoRAConfig, rank: int):
        super().__init__()
        self.ln_1 = LayerNorm(c.n_embd, c.bias)
        self.attn = Attention(c, rank)
        self.ln_2 = LayerNorm(c.n_embd, c.bias)
        self.mlp = MLP(c)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class LoRAGPT(nn.Module):
    """The fork's GPT. ``layer_ranks`` resizes single layers (0: no adapter)."""

    def __init__(self, c: LoRAConfig, layer_ranks: dict[int, int] | None = None):
        super().__init__()
        self.config = c
        ranks = [dict(layer_ranks or {}).get(i, c.attn_lora_rank) for i in range(c.n_layer)]
        if c.embedding_mode in ("lora", "lora_only") and c.embedding_rank > 0:
            wte = LoRAEmbedding(c.vocab_size, c.n_embd, c.embedding_rank, c.lora_alpha, c.embedding_mode == "lora_only")
        else:
            wte = nn.Embedding(c.vocab_size, c.n_embd)
        modules = dict(wte=wte, wpe=nn.Embedding(c.block_size, c.n_embd), h=nn.ModuleList([Block(c, r) for r in ranks]),
                       ln_f=LayerNorm(c.n_embd, c.bias))
        if c.use_rotary_embeddings:
            del modules["wpe"]  # rotary models have no position table
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.embedding_mode != "lora_only":
            table = wte.main_weight if isinstance(wte, LoRAEmbedding) else wte
            self.lm_head.weight = table.weight  # weight tying

    def forward(self, idx):
        x = self.transformer.wte(idx)
        if "wpe" in self.transformer:
            x = x + self.transformer.wpe(torch.arange(idx.size(1)))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))

    def freeze_main_weights(self):
        for name, p in self.named_parameters():
            if ".main_weight." in name:
                p.requires_grad_(False)

    def trainable(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def configure_optimizers(self, lr=1e-2):
        """nanoGPT's AdamW groups over the requires-grad parameters; ``param_names`` in
        the optimizer's positional order (what the fork's ckpt.pt stores)."""
        params = self.trainable()
        decay = [(n, p) for n, p in params if p.dim() >= 2]
        no_decay = [(n, p) for n, p in params if p.dim() < 2]
        opt = torch.optim.AdamW([{"params": [p for _, p in decay], "weight_decay": 0.1},
                                 {"params": [p for _, p in no_decay], "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
        return opt, [n for n, _ in decay + no_decay]

    def universal_state_dict(self) -> dict:
        """The fork's merge, defects included."""
        out = {}
        for name, t in self.state_dict().items():
            if ".lora_A." in name or ".lora_B." in name:
                continue
            if ".main_weight." in name:
                module_name, leaf = name.split(".main_weight.")
                module = self.get_submodule(module_name)
                if leaf == "weight":
                    if module.rank == 0:
                        continue  # defect: a rank-0 layer loses its weight
                    out[f"{module_name}.weight"] = t + module.delta()
                else:
                    out[f"{module_name}.{leaf}"] = t
            else:
                out[name] = t  # defect: lm_head.weight stays the unmerged main weight
        return out


def train(model: LoRAGPT, steps: int = 3, seed: int = 0):
    """A few AdamW steps on random tokens; returns (optimizer, param_names)."""
    gen = torch.Generator().manual_seed(seed)
    opt, names = model.configure_optimizers()
    c = model.config
    for _ in range(steps):
        x = torch.randint(0, c.vocab_size, (2, c.block_size), generator=gen)
        y = torch.randint(0, c.vocab_size, (2, c.block_size), generator=gen)
        loss = F.cross_entropy(model(x).view(-1, c.vocab_size), y.view(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return opt, names


def checkpoint_dict(model: LoRAGPT, opt, names, universal: bool, iter_num: int = 3) -> dict:
    c = model.config
    return {
        "model": model.universal_state_dict() if universal else model.state_dict(),
        "optimizer": opt.state_dict(),
        "model_args": asdict(c),
        "iter_num": iter_num,
        "best_val_loss": torch.tensor(2.5),
        "config": {"dataset": "shakespeare_char", "batch_size": 2, "learning_rate": 1e-2, "compile": False},
        "param_names": names,
    }


def batch(model: LoRAGPT, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.vocab_size, (2, model.config.block_size), generator=gen)


def fork_model(layer_ranks=None, **config) -> LoRAGPT:
    torch.manual_seed(0)
    model = LoRAGPT(LoRAConfig(**config), layer_ranks)
    model.freeze_main_weights()
    return model
