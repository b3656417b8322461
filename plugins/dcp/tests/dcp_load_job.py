"""Loads a DCP checkpoint into a fresh model as a training run resumes, and prints what it
computes next (``dcp_job.next_losses``) as JSON on stdout.

    torchrun --nproc_per_node=2 dcp_load_job.py CKPT     # FSDP2 (fully_shard), sharded load
    python dcp_load_job.py CKPT                          # one process, an unsharded model
    ... dcp_load_job.py CKPT --model-only                # weights only (a fresh AdamW)

Weights and AdamW state go through ``get_state_dict`` / ``dcp.load`` / ``set_state_dict``,
as torchtitan and the DCP tutorials resume.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from dcp_job import exit_now, model, next_losses, sharded
from torch.distributed.checkpoint.state_dict import get_state_dict, set_model_state_dict, set_state_dict


def main() -> None:
    path = sys.argv[1]
    distributed = "WORLD_SIZE" in os.environ
    if distributed:
        dist.init_process_group("gloo")
    torch.manual_seed(123)  # weights the checkpoint must replace
    m = model()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_()
    if distributed:
        m = sharded(m, dist.get_world_size())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    msd, osd = get_state_dict(m, opt)
    state = {"model": msd} if "--model-only" in sys.argv else {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=path, no_dist=not distributed)
    if "optim" in state:
        set_state_dict(m, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
    else:
        set_model_state_dict(m, state["model"])
    losses = next_losses(m, opt)
    if not distributed or dist.get_rank() == 0:
        print(json.dumps(losses))
    if distributed:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
