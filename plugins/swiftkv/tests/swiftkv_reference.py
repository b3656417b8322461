"""Reference layouts for the swiftkv tests: SwiftKV students as ArcticTraining saves them,
DeepSpeed output directories saved with torch.save; teachers from the hf tests' references."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[2] / "hf" / "tests"))  # the teachers: ckpt-plugin-hf's references
from hf_reference import TOKENIZER, make_model, save_bin, save_teacher  # noqa: E402

__all__ = ["TOKENIZER", "deepspeed_dir", "make_model", "model_states", "save_bin", "save_teacher", "student_b"]


def student_b(directory, model, kv_map, mlp=False):
    """A variant B student as the fork saves it: the teacher's state dict plus per-consumer
    ``q_proj_swiftkv`` (and MLP copies), config with string map keys."""
    from safetensors.torch import save_file

    directory.mkdir()
    state = dict(model.state_dict())
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight")
    out = {}
    for name, t in state.items():
        out[name] = t.clone()
        for c in kv_map:
            prefix = f"model.layers.{c}."
            if name == prefix + "self_attn.q_proj.weight":
                out[prefix + "self_attn.q_proj_swiftkv.weight"] = t.clone() + 0.5  # trained: differs from q_proj
            if mlp and name.startswith(prefix + "mlp.") and name.endswith("_proj.weight"):
                out[name.replace("_proj.weight", "_proj_swiftkv.weight")] = t.clone()
    save_file(out, directory / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.update(model_type=config["model_type"] + "_swiftkv",
                  architectures=[type(model).__name__.replace("ForCausalLM", "SwiftKVForCausalLM")],
                  kv_sharing_map={str(c): p for c, p in kv_map.items()}, mlp_tuning_enabled=mlp,
                  layernorm_tuning_enabled=False, num_key_value_layers=min(kv_map), swiftkv=True)
    (directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    (directory / "tokenizer.json").write_bytes(TOKENIZER)
    return directory


def model_states(module: dict | None, step: int = 40, **more) -> dict:
    """A DeepSpeed ``mp_rank_00_model_states.pt`` dict with ArcticTraining's client state."""
    random.seed(3)
    np.random.seed(3)
    return {
        "module": module,
        "buffer_names": [],
        "optimizer": None,
        "param_shapes": [{n: t.shape for n, t in (module or {}).items()}],
        "frozen_param_shapes": None,
        "frozen_param_fragments": None,
        "shared_params": {},
        "lr_scheduler": {"last_epoch": step, "_step_count": step + 1, "base_lrs": [1e-4]},
        "global_steps": step,
        "global_samples": step * 8,
        "skipped_steps": 0,
        "dp_world_size": 2,
        "mp_world_size": 1,
        "ds_config": {"train_batch_size": 8, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}},
        "ds_version": "0.16.4",
        "global_step": step,
        "end_of_epoch": 1,
        "torch_random_state": torch.get_rng_state(),
        "np_random_state": np.random.get_state(),
        "python_random_state": random.getstate(),
        "wandb_run_id": "abc123",
        **more,
    }


def deepspeed_dir(directory, module, tag="epoch_1_global_step_40", step=40, **more):
    """``<output_dir>/latest`` + ``<tag>/mp_rank_00_model_states.pt`` + ZeRO optimizer files."""
    folder = directory / tag
    folder.mkdir(parents=True)
    torch.save(model_states(module, step, **more), folder / "mp_rank_00_model_states.pt")
    for rank in range(2):
        torch.save({"optimizer_state_dict": {"zero_stage": 2, "partition_count": 2}},
                   folder / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
    (directory / "latest").write_text(tag)
    (directory / "zero_to_fp32.py").write_text("# copied by DeepSpeed\n")
    return directory
