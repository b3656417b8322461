"""Real moshi models and run directories laid out as the (TTT) fine-tuning code writes them.

The model is moshi's own ``LMModel`` (tiny, no download), wrapped with moshi's LoRA. TTT
blocks are not in the moshi package: ``add_ttt`` wraps chosen layers the way the TTT
variant does (the original layer registered under ``original_layer`` and again under
``seq_modeling_block.original_layer``, a TTT block under ``seq_modeling_block.ttt_layer.ttt``
with the shapes of the format note, and two gates), with a small forward that uses every
TTT tensor so that a misplaced one changes the output.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from moshi.models.lm import LMModel
from moshi.modules.lora import replace_all_linear_with_lora, replace_lora_with_linear
from safetensors.torch import save_file
from torch import nn

CONFIG = dict(dim=64, text_card=100, n_q=4, dep_q=2, card=32, num_heads=4, num_layers=2, hidden_scale=2, context=16,
              gating="silu", norm="rms_norm_f32", positional_embedding="rope", depformer_dim=32, depformer_num_heads=2,
              depformer_num_layers=1, depformer_multi_linear=True, depformer_weights_per_step=True,
              depformer_pos_emb="none", delays=[0, 0, 1, 1, 1], max_period=10000, causal=True,
              existing_text_padding_id=3)
LORA_RANK, LORA_SCALING = 2, 2.0
TTT_LAYERS = [1]
TTT = {"enable": True, "layers": "1", "base_lr": 1.0, "mini_batch_size": 4, "gating_alpha_init": 0.1}


class TTTBlock(nn.Module):
    """``ttt_layer.ttt``: a TTT-MLP block with H heads of dim D over width W."""

    def __init__(self, h: int, d: int, w: int):
        super().__init__()
        self.h, self.d = h, d
        r = lambda *s: nn.Parameter(torch.randn(*s) * 0.1)  # noqa: E731
        self.W1, self.b1, self.W2, self.b2 = r(h, d, 4 * d), r(h, 1, 4 * d), r(h, 4 * d, d), r(h, 1, d)
        self.wq, self.wk, self.wv, self.wo = (nn.Linear(w, h * d) for _ in range(4))
        self.learnable_ttt_lr_weight, self.learnable_ttt_lr_bias = r(h, 1, w), r(h, 1)
        self.ttt_norm_weight, self.ttt_norm_bias = nn.Parameter(1 + torch.randn(h, d) * 0.1), r(h, d)
        self.post_norm = nn.LayerNorm(w)

    def forward(self, x):
        b, t, _ = x.shape
        h, d = self.h, self.d
        q, k, v = (proj(x).view(b, t, h, d) for proj in (self.wq, self.wk, self.wv))
        lr = torch.sigmoid(torch.einsum("btw,how->bth", x, self.learnable_ttt_lr_weight) + self.learnable_ttt_lr_bias.view(h))
        z = q + lr[..., None] * (v - k)
        hidden = F.gelu(torch.einsum("bthd,hde->bthe", z, self.W1) + self.b1.view(1, 1, h, -1))
        out = torch.einsum("bthe,hed->bthd", hidden, self.W2) + self.b2.view(1, 1, h, d)
        out = F.layer_norm(out, (d,)) * self.ttt_norm_weight + self.ttt_norm_bias
        return self.post_norm(self.wo(out.reshape(b, t, h * d)))


class Gate(nn.Module):
    def __init__(self, w: int, init: float):
        super().__init__()
        self.gating_alpha = nn.Parameter(torch.full((w,), init) + torch.randn(w) * 0.01)

    def forward(self, x):
        return torch.tanh(self.gating_alpha) * x


class TTTLayer(nn.Module):
    def __init__(self, h, d, w):
        super().__init__()
        self.ttt = TTTBlock(h, d, w)


class SeqModelingBlock(nn.Module):
    def __init__(self, layer, h, d, w, init):
        super().__init__()
        self.original_layer = layer
        self.ttt_layer = TTTLayer(h, d, w)
        self.forward_ssm_gating = Gate(w, init)
        self.backward_ssm_gating = Gate(w, init)


class TTTWrapper(nn.Module):
    """A transformer layer with a TTT block: the original layer under two names."""

    def __init__(self, layer, h, d, w, init):
        super().__init__()
        self.original_layer = layer
        self.seq_modeling_block = SeqModelingBlock(layer, h, d, w, init)

    def forward(self, x, *args, **kwargs):
        y = self.original_layer(x, *args, **kwargs)
        s = self.seq_modeling_block
        t = s.ttt_layer.ttt(y)
        return y + s.forward_ssm_gating(t) + s.backward_ssm_gating(t.flip(1)).flip(1)


def tiny_lm(seed: int = 0, lora: bool = True, ttt_layers=TTT_LAYERS, dtype=torch.float32) -> LMModel:
    """The tiny LMModel, LoRA-wrapped (LoRA B made non-zero) and with TTT layers."""
    torch.manual_seed(seed)
    model = LMModel(**CONFIG)
    if lora:
        replace_all_linear_with_lora(model, LORA_RANK, LORA_SCALING)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.05)
    add_ttt(model, ttt_layers)
    return model.to(dtype)


def add_ttt(model: LMModel, layers, init: float = TTT["gating_alpha_init"]) -> None:
    h = CONFIG["num_heads"]
    d, w = CONFIG["dim"] // h, CONFIG["dim"]
    for i in layers:
        model.transformer.layers[i] = TTTWrapper(model.transformer.layers[i], h, d, w, init)


def empty_lm(lora: bool, ttt_layers=TTT_LAYERS, dtype=torch.bfloat16) -> LMModel:
    """A model of the same structure to load files into (strict)."""
    model = tiny_lm(seed=1234, lora=lora, ttt_layers=ttt_layers)
    return model.to(dtype)


def trainable(model) -> dict[str, torch.Tensor]:
    """What the fine-tuning code trains: LoRA matrices and TTT tensors (every name)."""
    return {k: v for k, v in model.state_dict().items() if "lora_" in k or "seq_modeling_block.ttt_layer" in k
            or "ssm_gating" in k}


def merged_state(model) -> dict[str, torch.Tensor]:
    """The state dict with LoRA merged by moshi (``replace_lora_with_linear``) on a copy."""
    import copy

    clone = copy.deepcopy(model)
    replace_lora_with_linear(clone)
    return clone.state_dict()


def codes(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = torch.randint(0, CONFIG["text_card"], (2, 1, 8), generator=g)
    audio = torch.randint(0, CONFIG["card"], (2, CONFIG["n_q"], 8), generator=g)
    return torch.cat([text, audio], dim=1)


@torch.no_grad()
def outputs(model, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    out = model(codes(seed))  # positions the delays leave empty are NaN: zero them to compare
    return torch.nan_to_num(out.logits.float()), torch.nan_to_num(out.text_logits.float())


def args_yaml(save_adapters: bool, keep: int = 3) -> dict:
    return {"run_dir": "runs/tiny", "param_dtype": "bfloat16", "num_ckpt_keep": keep, "save_adapters": save_adapters,
            "lora": {"enable": True, "rank": LORA_RANK, "scaling": LORA_SCALING, "ft_embed": False},
            "ttt": dict(TTT), "optim": {"lr": 2e-4, "weight_decay": 0.1}, "max_steps": 400, "seed": 0}


def save_checkpoint(model, optimizer, run_dir: Path, step: int, save_adapters: bool, dtype=torch.bfloat16,
                    interrupted: bool = False) -> Path:
    """One checkpoint, as the TTT fine-tuning code saves it: into tmp.consolidated/, then a
    rename to consolidated/ (skipped when ``interrupted``)."""
    folder = run_dir / "checkpoints" / f"checkpoint_{step:06d}"
    tmp = folder / "tmp.consolidated"
    tmp.mkdir(parents=True)
    if save_adapters:
        tensors, name = trainable(model), "lora.safetensors"
    else:
        tensors, name = merged_state(model), "consolidated.safetensors"
    save_file({k: v.detach().to(dtype).contiguous().clone() for k, v in sorted(tensors.items())}, tmp / name)
    config = {**CONFIG, "lora": True, "lora_rank": LORA_RANK, "lora_scaling": LORA_SCALING}
    (tmp / "config.json").write_text(json.dumps(config, indent=4))
    (tmp / "training_config.json").write_text(json.dumps({**args_yaml(save_adapters), "ttt": dict(TTT)}, indent=4))
    torch.save({"optimizer": optimizer.state_dict(), "step": step}, tmp / "optimizer_state.pt")
    if not interrupted:
        os.rename(tmp, folder / "consolidated")
    return folder


def train_steps(model, optimizer, n: int) -> None:
    model.train()
    for _ in range(n):
        optimizer.zero_grad()
        out = model(codes(1))
        loss = out.logits[out.mask].float().pow(2).mean() + out.text_logits[out.text_mask].float().pow(2).mean()
        loss.backward()
        optimizer.step()


def make_run(run_dir: Path, save_adapters: bool, steps=(100, 200, 300), interrupted_step: int | None = 400,
             seed: int = 0, dtype=torch.bfloat16):
    """A run directory with several checkpoints (and an interrupted save); returns the model
    and optimizer as they were at the last complete checkpoint."""
    run_dir.mkdir(parents=True)
    (run_dir / "args.yaml").write_text(yaml.safe_dump(args_yaml(save_adapters), sort_keys=False))
    (run_dir / "metrics.train.jsonl").write_text('{"step": 100, "loss": 1.0}\n')
    model = tiny_lm(seed)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name or "seq_modeling_block.ttt_layer" in name or "ssm_gating" in name)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in steps:
        train_steps(model, optimizer, 1)
        save_checkpoint(model, optimizer, run_dir, step, save_adapters, dtype)
    if interrupted_step is not None:
        import copy

        ghost = copy.deepcopy(model)
        save_checkpoint(ghost, optimizer, run_dir, interrupted_step, save_adapters, dtype, interrupted=True)
    return model, optimizer


def base_model_file(model, path: Path, dtype=torch.bfloat16) -> Path:
    """The pretrained model's ``model.safetensors`` (HF-style): the LoRA bases, no TTT."""
    state = {k.replace("frozen_W.", ""): v for k, v in model.state_dict().items()
             if "lora_" not in k and "seq_modeling_block" not in k}
    state = {k.replace("original_layer.", ""): v for k, v in state.items()}
    save_file({k: v.detach().to(dtype).contiguous().clone() for k, v in sorted(state.items())}, path)
    return path


@functools.cache
def built(kind: str) -> tuple[Path, object]:
    """A run directory of ``kind`` (lora, full, single) and the model at its latest complete step."""
    root = Path(tempfile.mkdtemp(prefix=f"moshi-ttt-{kind}-"))
    atexit.register(shutil.rmtree, root, True)
    if kind == "single":  # one complete lora checkpoint, nothing else
        model, _ = make_run(root / "run", save_adapters=True, steps=(300,), interrupted_step=None)
    else:
        model, _ = make_run(root / "run", save_adapters=kind == "lora")
    base_model_file(model, root / "model.safetensors")
    return root, model


def copy_run(kind: str, dst: Path) -> Path:
    """A fresh copy of the ``kind`` run directory at ``dst`` (its ``model.safetensors`` beside it)."""
    root, _ = built(kind)
    shutil.copytree(root / "run", dst)
    shutil.copy(root / "model.safetensors", dst.parent / "model.safetensors")
    return dst
