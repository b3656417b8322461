"""Fixtures: the fork's checkpoints built with the reference modules, trained a few steps,
and a tiny Hugging Face GPT-2 with real peft adapters."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from lora_reference import LoRAConfig, LoRAGPT, checkpoint_dict, fork_model, train  # noqa: E402


@pytest.fixture(scope="module")
def fork(tmp_path_factory):
    """A trained LoRA model (layer 1 resized to rank 0) saved the ways the fork saves."""
    root = tmp_path_factory.mktemp("fork")
    model = fork_model({1: 0}, n_layer=3)
    opt, names = train(model)
    torch.save(checkpoint_dict(model, opt, names, universal=False), root / "lora.pt")
    torch.save(model.state_dict(), root / "bare.pt")
    whole = fork_model(n_layer=3)
    opt2, names2 = train(whole)
    torch.save(checkpoint_dict(whole, opt2, names2, universal=True), root / "merged.pt")
    torch.save(checkpoint_dict(model, opt, names, universal=True), root / "merged-rank0.pt")
    return {"dir": root, "model": model.eval(), "whole": whole.eval(), "optimizer": opt, "names": names}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain nanoGPT (no LoRA) as a canonical checkpoint directory, with training state."""
    from ckpt_core import Arch, Checkpoint, OptimizerState, TrainState, api
    from ckpt_core.torchfile import from_torch

    root = tmp_path_factory.mktemp("plain")
    torch.manual_seed(1)
    model = LoRAGPT(LoRAConfig(attn_lora_rank=0, embedding_mode="default", embedding_rank=0)).eval()
    sd = model.state_dict()
    tensors = {k: from_torch(v) for k, v in sd.items() if k != "lm_head.weight"}
    first = next(iter(tensors))
    optimizer = OptimizerState("adamw", {first: {"exp_avg": tensors[first], "step": 3}}, [{"lr": 0.1, "params": [first]}])
    params = {"n_layer": 2, "n_head": 2, "d_model": 32, "block_size": 16, "vocab_size": 48, "d_ff": 128}
    ck = Checkpoint(arch=Arch("gpt", params), tensors=tensors, ties={"lm_head.weight": "transformer.wte.weight"},
                    train_state=TrainState(step=3, optimizer=optimizer))
    api.save(ck, root / "plain", "canonical")
    return {"path": root / "plain", "model": model}
