"""Real DeepSpeed ZeRO checkpoints for the tests, written by DeepSpeed's own engine on CPU.

Run under ``torchrun --nproc_per_node=W deepspeed_train.py OUT CASE...`` with
``DS_ACCELERATOR=cpu`` (conftest.py does, once per session). Each CASE (``z2-bf16``,
``z3-fp32``, ``bf16opt``: ZeRO-1 + bf16 + fp32 gradient accumulation, DeepSpeed's BF16_Optimizer) trains a small model with odd sizes
(a vocabulary of 301, width 65), a frozen linear layer, a tied head and a buffer for two
steps, saving ``OUT/<case>-ws<W>/global_step1`` and ``global_step2``. Beside each run,
rank 0 writes ``expected.pt``: per trainable parameter what the engine holds after step 2
(fp32 master weight, ``exp_avg``, ``exp_avg_sq``, gathered from every rank by DeepSpeed's
``safe_get_full_*``), the module's own state dict below ZeRO-3, and the losses of two
more steps on data every rank shares (``next_losses``). ``deepspeed_train.py resume OUT
LOAD_DIR CASE`` loads a checkpoint into a fresh engine and writes the losses of the same two
steps to OUT: a resumed run must match them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import deepspeed
import torch
from deepspeed.accelerator import get_accelerator
from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state
from torch import nn

VOCAB, WIDTH = 301, 65


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.proj = nn.Linear(WIDTH, WIDTH)
        self.norm = nn.LayerNorm(WIDTH)
        self.frozen = nn.Linear(WIDTH, 7)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(WIDTH, VOCAB, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("scale", torch.linspace(0.5, 1.5, WIDTH))

    def forward(self, tokens):
        e = self.embed(tokens)
        h = self.norm(self.proj(e.to(self.proj.weight.dtype))) * self.scale.to(self.proj.weight.dtype)
        logits = self.head(h.to(self.head.weight.dtype))
        frozen = self.frozen(h.to(self.frozen.weight.dtype))  # DeepSpeed leaves frozen parameters in fp32
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), tokens[:, 1:].reshape(-1)) \
            + frozen.float().pow(2).mean()


def config(case: str) -> dict:
    """``case``: ``z<stage>-<dtype>`` or ``bf16opt``; ``-universal`` at the end loads universal checkpoints."""
    kind, dtype = case.split("-")[:2] if "-" in case else ("z1", "bf16")
    cfg = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": int(kind[1:])},
        "steps_per_print": 1000,
    }
    if dtype == "bf16":
        cfg["bf16"] = {"enabled": True}
    if dtype == "fp16":  # a dynamic loss scaler (DeepSpeed's CPU accelerator says no fp16: told otherwise below)
        cfg["fp16"] = {"enabled": True, "initial_scale_power": 8}
    if case == "bf16opt":
        cfg["data_types"] = {"grad_accum_dtype": "fp32"}
    if case.endswith("-universal"):
        cfg["checkpoint"] = {"load_universal": True}
    return cfg


def run(out: Path, case: str) -> None:
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    get_accelerator().is_fp16_supported = lambda: True  # torch's CPU kernels run this small model in fp16
    torch.manual_seed(0)
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config(case))
    folder = out / f"{case}-ws{world}"
    data = torch.Generator().manual_seed(100 + rank)
    for step in (1, 2):
        tokens = torch.randint(0, VOCAB, (2, 9), generator=data)
        loss = engine(tokens)
        engine.backward(loss)
        engine.step()
        engine.save_checkpoint(str(folder), client_state={"epoch": 0, "note": case})
    expected = {"params": {}, "module": None}
    for name, p in engine.module.named_parameters():
        if not p.requires_grad:
            continue
        if engine.zero_optimization_stage() == 0:  # no ZeRO: the torch optimizer holds the state
            expected["params"][name] = {"fp32": p.detach().clone(), **{
                key: optimizer.state[p][key].clone() for key in ("exp_avg", "exp_avg_sq")}}
        else:
            expected["params"][name] = {"fp32": safe_get_full_fp32_param(p).clone(), **{
                key: safe_get_full_optimizer_state(p, key).clone() for key in ("exp_avg", "exp_avg_sq")}}
    if engine.zero_optimization_stage() < 3:
        expected["module"] = {k: v.clone() for k, v in engine.module.state_dict().items()}
    expected["next_losses"] = next_losses(engine)
    if rank == 0:
        torch.save(expected, folder / "expected.pt")
    torch.distributed.barrier()


def next_losses(engine) -> list[float]:
    """The losses of two more steps on data every rank shares, so that a run resumed at
    another world size sees the same gradients (their mean over ranks is exact)."""
    data = torch.Generator().manual_seed(7)
    losses = []
    for _ in range(2):
        loss = engine(torch.randint(0, VOCAB, (2, 9), generator=data))
        losses.append(loss.item())
        engine.backward(loss)
        engine.step()
    return losses


def resume(out: Path, load_dir: Path, case: str) -> None:
    """Load ``load_dir`` (its latest tag) into a fresh engine for ``case`` at this world
    size and write the losses of the two steps after it to ``out``."""
    get_accelerator().is_fp16_supported = lambda: True
    torch.manual_seed(1)  # other initial weights: everything must come from the checkpoint
    model = Net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler, config=config(case))
    _, client = engine.load_checkpoint(str(load_dir))
    result = {"losses": next_losses(engine), "global_steps": engine.global_steps, "client": {
        k: client[k] for k in ("epoch", "note") if k in client}}
    if torch.distributed.get_rank() == 0:
        torch.save(result, out)
    torch.distributed.barrier()


def llama(hf_dir: Path, load_dir: Path, out: Path, stage: str) -> None:
    """An HF Llama (transformers) trained from ``hf_dir`` by engine A, and resumed from
    ``load_dir`` (ckpt-core's DeepSpeed conversion of it, with a fresh optimizer state) by
    engine B built from other weights: both with AdamW(lr=1e-2, weight_decay=0.1), two steps
    on data every rank shares. B then saves its own checkpoint to ``out/after``; rank 0
    writes both runs' losses to ``out/losses.pt``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
           "zero_optimization": {"stage": int(stage)}, "steps_per_print": 1000}
    losses = []
    for source in ("hf", "deepspeed"):
        torch.manual_seed(1)
        model = LlamaForCausalLM.from_pretrained(hf_dir) if source == "hf" else LlamaForCausalLM(
            LlamaConfig.from_pretrained(hf_dir))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
        if source == "deepspeed":
            engine.load_checkpoint(str(load_dir))
        data = torch.Generator().manual_seed(7)
        run = []
        for _ in range(2):
            tokens = torch.randint(0, model.config.vocab_size, (2, 9), generator=data)
            loss = engine(input_ids=tokens, labels=tokens).loss
            run.append(loss.item())
            engine.backward(loss)
            engine.step()
        losses.append(run)
    engine.save_checkpoint(str(out / "after"))
    if torch.distributed.get_rank() == 0:
        torch.save({"hf": losses[0], "deepspeed": losses[1]}, out / "losses.pt")
    torch.distributed.barrier()


def main() -> None:
    deepspeed.init_distributed(dist_backend="gloo")
    if sys.argv[1] == "llama":  # llama HF_DIR LOAD_DIR OUT STAGE
        llama(*map(Path, sys.argv[2:5]), sys.argv[5])
        return
    if sys.argv[1] == "resume":  # resume OUT LOAD_DIR CASE [OUT LOAD_DIR CASE ...]
        args = sys.argv[2:]
        for i in range(0, len(args), 3):
            resume(Path(args[i]), Path(args[i + 1]), args[i + 2])
        return
    out = Path(sys.argv[1])
    for case in sys.argv[2:]:
        run(out, case)


if __name__ == "__main__":
    main()
