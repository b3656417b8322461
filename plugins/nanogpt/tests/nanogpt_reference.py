"""Reference modules that mirror the upstream key names and shapes, and savers that write
checkpoints exactly as the upstream training scripts do.

- ``NanoGPT``: karpathy/nanoGPT model.py (with or without bias; ``mask_buffer`` registers
  the torch < 2.0 causal-mask buffer ``attn.bias``), its ``configure_optimizers`` AdamW.
- ``ModdedQKV``: modded-nanogpt train_gpt.py (2025-07..10): ``qkv_w`` [3, H, C], ``c_proj``,
  ``c_fc``, value embeddings, ``scalars`` padded to the world size, a layer without attention.
- ``ModdedQKVO``: train_gpt_medium.py: ``qkvo_w`` [4, H, C], ``fc_w``/``proj_w``, ``lm_head_w``.
  Both modded modules compute the same function of the same weights (so a converted
  checkpoint gives identical outputs), in float32 whatever the stored dtypes.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# -- karpathy/nanoGPT ------------------------------------------------------------------------


@dataclasses.dataclass
class GPTConfig:
    block_size: int = 16
    vocab_size: int = 64
    n_layer: int = 2
    n_head: int = 2
    n_embd: int = 32
    dropout: float = 0.0
    bias: bool = False


class LayerNorm(nn.Module):
    def __init__(self, ndim, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(ndim))
        self.bias = nn.Parameter(torch.zeros(ndim)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, self.weight.shape, self.weight, self.bias, 1e-5)


class CausalSelfAttention(nn.Module):
    def __init__(self, config, mask_buffer=False):
        super().__init__()
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.flash = not mask_buffer
        if mask_buffer:  # what torch < 2.0 runs of nanoGPT save
            T = config.block_size
            self.register_buffer("bias", torch.tril(torch.ones(T, T)).view(1, 1, T, T))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        if self.flash:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            y = F.softmax(att, dim=-1) @ v
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)

    def forward(self, x):
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, config, mask_buffer=False):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config, mask_buffer)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, config, mask_buffer=False):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, mask_buffer) for _ in range(config.n_layer)]),
            ln_f=LayerNorm(config.n_embd, bias=config.bias),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for pn, p in self.named_parameters():
            if pn.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, targets=None):
        pos = torch.arange(0, idx.size(1), dtype=torch.long)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def configure_optimizers(self, weight_decay, learning_rate, betas):
        param_dict = {pn: p for pn, p in self.named_parameters() if p.requires_grad}
        decay = [p for p in param_dict.values() if p.dim() >= 2]
        nodecay = [p for p in param_dict.values() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": nodecay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas)


def batch(step: int, vocab: int, block: int, size: int = 4):
    """The random-token batch of a training step (the same for every run)."""
    g = torch.Generator().manual_seed(1000 + step)
    data = torch.randint(0, vocab, (size, block + 1), generator=g)
    return data[:, :-1], data[:, 1:]


def train_nanogpt(model: NanoGPT, optimizer, steps: range) -> list[float]:
    """nanoGPT's loop on random tokens (no grad accumulation, no clipping); the losses."""
    losses = []
    for it in steps:
        x, y = batch(it, model.config.vocab_size, model.config.block_size)
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return losses


NANOGPT_CONFIG_KEYS = {  # train.py's simple globals (a few of them), as its config dict holds them
    "out_dir": "out", "eval_interval": 2000, "log_interval": 1, "eval_iters": 200, "eval_only": False,
    "always_save_checkpoint": True, "init_from": "scratch", "wandb_log": False, "dataset": "openwebtext",
    "gradient_accumulation_steps": 1, "batch_size": 4, "learning_rate": 6e-4, "max_iters": 3,
    "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0, "decay_lr": True,
    "backend": "nccl", "device": "cpu", "dtype": "float32", "compile": True,
}


def save_nanogpt(model: NanoGPT, optimizer, iter_num: int, path: Path, compiled: bool = True) -> dict:
    """Write ``ckpt.pt`` as nanoGPT's train.py does; return the dict."""
    c = model.config
    model_args = dict(n_layer=c.n_layer, n_head=c.n_head, n_embd=c.n_embd, block_size=c.block_size,
                      bias=c.bias, vocab_size=c.vocab_size, dropout=c.dropout)
    with torch.no_grad():
        x, y = batch(10_000, c.vocab_size, c.block_size)
        best_val_loss = model(x, y)[1]  # estimate_loss's mean: a 0-d tensor
    raw = torch.compile(model) if compiled else model  # compile=True: keys get "_orig_mod."
    checkpoint = {
        "model": raw.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": iter_num,
        "best_val_loss": best_val_loss,
        "config": dict(NANOGPT_CONFIG_KEYS),
    }
    torch.save(checkpoint, path)
    return checkpoint


def load_nanogpt(path: Path, mask_buffer: bool = False) -> tuple[NanoGPT, torch.optim.Optimizer, dict]:
    """Resume as train.py does: model_args, strip ``_orig_mod.``, strict load, optimizer state."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    args = checkpoint["model_args"]
    model = NanoGPT(GPTConfig(**{k: args[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size")}),
                    mask_buffer)
    state = checkpoint["model"]
    state = {k.removeprefix("_orig_mod."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    if "optimizer" in checkpoint:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return model, optimizer, checkpoint


# -- modded-nanogpt --------------------------------------------------------------------------


@dataclasses.dataclass
class ModdedConfig:
    vocab_size: int = 64  # embeddings; the head has it padded to a multiple of 64 (61 -> 64 as 50257 -> 50304)
    n_layer: int = 4
    n_head: int = 2
    head_dim: int = 16
    dim: int = 32
    n_value_embeds: int = 2
    no_attention: tuple[int, ...] = (2,)  # as layer 7 upstream
    world_size: int = 8  # scalars padded to a multiple of it (qkv layout)


def _norm(x):
    return F.rms_norm(x, (x.size(-1),))


def _head_rows(c: ModdedConfig) -> int:
    return -(-c.vocab_size // 64) * 64


def _attend(x, w_qkv, w_o, ve, lambdas, n_head, head_dim):
    B, T, _ = x.shape
    q, k, v = F.linear(x, w_qkv.flatten(end_dim=1).float()).view(B, T, 3 * n_head, head_dim).chunk(3, dim=-2)
    q, k = _norm(q), _norm(k)
    if ve is not None:
        v = lambdas[0] * v + lambdas[1] * ve.view_as(v)
    y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True)
    return F.linear(y.transpose(1, 2).reshape(B, T, n_head * head_dim), w_o.float())


def _modded_forward(model, idx, targets, attention, mlp, head):
    """The modded forward both layouts share: ``attention(i)`` gives (w_qkv, w_o) or None,
    ``mlp(i)`` (w_fc, w_proj)."""
    c = model.config
    L = c.n_layer
    s = model.scalars.float()
    skip, lambdas, sa_lambdas = s[:L], s[L:3 * L].view(L, 2), s[3 * L:5 * L].view(L, 2)
    ves = [ve(idx).float() for ve in model.value_embeds]
    x = x0 = _norm(model.embed(idx).float())
    first = None
    for i in range(L):
        if i == L - 1:
            x = x + skip[0] * first
        x = lambdas[i, 0] * x + lambdas[i, 1] * x0
        weights = attention(i)
        if weights is not None:
            ve = ves[i] if i < len(ves) else None
            x = x + _attend(_norm(x), *weights, ve, sa_lambdas[i], c.n_head, c.head_dim)
        w_fc, w_proj = mlp(i)
        x = x + F.linear(F.relu(F.linear(_norm(x), w_fc.float())).square(), w_proj.float())
        if i == 0:
            first = x
    logits = F.linear(_norm(x), head.float())
    logits = 30 * torch.sigmoid(logits / 7.5)
    loss = None if targets is None else F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
    return logits, loss


class CastedLinear(nn.Linear):
    def __init__(self, in_features, out_features):
        super().__init__(in_features, out_features, bias=False)


class Rotary(nn.Module):
    """Rotary tables: buffers that are never saved (persistent=False), as upstream."""

    def __init__(self, head_dim, max_seq_len=64):
        super().__init__()
        freqs = (1 / 1024) ** torch.linspace(0, 1, head_dim // 4)
        theta = torch.outer(torch.arange(max_seq_len).float(), freqs)
        self.register_buffer("cos", theta.cos(), persistent=False)
        self.register_buffer("sin", theta.sin(), persistent=False)


class QKVAttention(nn.Module):
    def __init__(self, c: ModdedConfig):
        super().__init__()
        hdim = c.n_head * c.head_dim
        bound = 3 ** 0.5 * 0.5 * c.dim ** -0.5
        self.qkv_w = nn.Parameter(torch.empty(3, hdim, c.dim).uniform_(-bound, bound))
        self.rotary = Rotary(c.head_dim)
        self.c_proj = CastedLinear(hdim, c.dim)


class QKVMLP(nn.Module):
    def __init__(self, c: ModdedConfig):
        super().__init__()
        self.c_fc = CastedLinear(c.dim, 4 * c.dim)
        self.c_proj = CastedLinear(4 * c.dim, c.dim)


class QKVBlock(nn.Module):
    def __init__(self, c: ModdedConfig, i: int):
        super().__init__()
        self.attn = QKVAttention(c) if i not in c.no_attention else None
        self.mlp = QKVMLP(c)


def _scalars(c: ModdedConfig, pad: int) -> torch.Tensor:
    L = c.n_layer
    return torch.cat([torch.ones(L), *[torch.tensor([1.0, 0.0]) for _ in range(L)],
                      *[torch.tensor([0.5, 0.5]) for _ in range(L)], torch.ones(pad)])


class ModdedQKV(nn.Module):
    """train_gpt.py's GPT (layout "qkv")."""

    def __init__(self, c: ModdedConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.value_embeds = nn.ModuleList([nn.Embedding(c.vocab_size, c.dim) for _ in range(c.n_value_embeds)])
        self.blocks = nn.ModuleList([QKVBlock(c, i) for i in range(c.n_layer)])
        self.lm_head = CastedLinear(c.dim, _head_rows(c))
        pad = (-5 * c.n_layer) % c.world_size
        self.scalars = nn.Parameter(_scalars(c, pad))
        for m in self.modules():  # upstream keeps embeddings in bfloat16
            if isinstance(m, nn.Embedding):
                m.bfloat16()

    def forward(self, idx, targets=None):
        def attention(i):
            a = self.blocks[i].attn
            return None if a is None else (a.qkv_w, a.c_proj.weight)

        return _modded_forward(self, idx, targets, attention,
                               lambda i: (self.blocks[i].mlp.c_fc.weight, self.blocks[i].mlp.c_proj.weight), self.lm_head.weight)


class QKVOAttention(nn.Module):
    def __init__(self, c: ModdedConfig):
        super().__init__()
        hdim = c.n_head * c.head_dim
        bound = 3 ** 0.5 * 0.5 * c.dim ** -0.5
        self.qkvo_w = nn.Parameter(torch.empty(4, hdim, c.dim).uniform_(-bound, bound))
        self.rotary = Rotary(c.head_dim)


class QKVOMLP(nn.Module):
    def __init__(self, c: ModdedConfig):
        super().__init__()
        bound = 3 ** 0.5 * 0.5 * c.dim ** -0.5
        self.fc_w = nn.Parameter(torch.empty(4 * c.dim, c.dim).uniform_(-bound, bound))
        self.proj_w = nn.Parameter(torch.empty(c.dim, 4 * c.dim).uniform_(-bound, bound))


class QKVOBlock(nn.Module):
    def __init__(self, c: ModdedConfig, i: int):
        super().__init__()
        self.attn = QKVOAttention(c) if i not in c.no_attention else None
        self.mlp = QKVOMLP(c)


class ModdedQKVO(nn.Module):
    """train_gpt_medium.py's GPT (layout "qkvo"); ``n_scalars`` as the file has it."""

    def __init__(self, c: ModdedConfig, n_scalars: int | None = None):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.dim)
        self.value_embeds = nn.ModuleList([nn.Embedding(c.vocab_size, c.dim) for _ in range(c.n_value_embeds)])
        self.blocks = nn.ModuleList([QKVOBlock(c, i) for i in range(c.n_layer)])
        self.lm_head_w = nn.Parameter(torch.empty(_head_rows(c), c.dim).uniform_(-0.1, 0.1))
        self.scalars = nn.Parameter(_scalars(c, (n_scalars or 5 * c.n_layer) - 5 * c.n_layer))
        for m in self.modules():
            if isinstance(m, nn.Embedding):
                m.bfloat16()
        for b in self.blocks:  # the medium script keeps block weights in bfloat16
            for p in b.parameters():
                p.data = p.data.bfloat16()

    def forward(self, idx, targets=None):
        def attention(i):
            a = self.blocks[i].attn
            return None if a is None else (a.qkvo_w[:3], a.qkvo_w[3])

        return _modded_forward(self, idx, targets, attention,
                               lambda i: (self.blocks[i].mlp.fc_w, self.blocks[i].mlp.proj_w), self.lm_head_w)


class Muon(torch.optim.Optimizer):
    """Stands for modded-nanogpt's Muon: momentum buffers per parameter (no orthogonalisation)."""

    def __init__(self, params, lr=0.02, momentum=0.95):
        super().__init__(params, dict(lr=lr, momentum=momentum))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.lerp_(p.grad, 1 - group["momentum"])
                p.add_(buf.to(p.dtype), alpha=-group["lr"])


def modded_optimizers(model: nn.Module) -> list[torch.optim.Optimizer]:
    """Adam for embeddings, head and scalars; Muon for the block matrices (as upstream)."""
    hidden = [p for n, p in model.blocks.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if not n.startswith("blocks.")]
    return [torch.optim.Adam(rest, lr=0.008, betas=(0.8, 0.95), eps=1e-10), Muon(hidden)]


def train_modded(model: nn.Module, optimizers, steps: range) -> list[float]:
    losses = []
    for it in steps:
        x, y = batch(it, model.config.vocab_size, 16)
        _, loss = model(x, y)
        losses.append(loss.item())
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)
    return losses


CODE = "# train_gpt.py\nimport os\nimport sys\nwith open(sys.argv[0]) as f:\n    code = f.read()  # the script's own source\n"


def save_modded(model: nn.Module, optimizers, step: int, run_dir: Path) -> Path:
    """``logs/<run_id>/state_step<step:06d>.pt`` as modded-nanogpt writes it (compiled model)."""
    log = dict(step=step, code=CODE, model=torch.compile(model).state_dict(),
               optimizers=[opt.state_dict() for opt in optimizers])
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"state_step{step:06d}.pt"
    torch.save(log, path)
    return path


@dataclasses.dataclass
class ScriptOptimizerState:
    """Stands for the 2026 script-defined dataclass in ``optimizer``. Unpickling it runs its
    ``__setstate__``, which leaves a marker file: a reader that executes nothing never does."""

    marker: str
    buffers: dict

    def __setstate__(self, state):
        Path(state["marker"]).write_text("unpickling ran code from the file")
        self.__dict__.update(state)


def save_modded_2026(model: nn.Module, step: int, run_dir: Path, marker: Path) -> Path:
    """The 2026 save: ``optimizer`` holds a script-defined class that weights_only refuses."""
    state = ScriptOptimizerState(str(marker), {"step": torch.tensor(step)})
    log = dict(step=step, code=CODE, model=torch.compile(model).state_dict(), optimizer=state)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / f"state_step{step:06d}.pt"
    torch.save(log, path)
    return path
