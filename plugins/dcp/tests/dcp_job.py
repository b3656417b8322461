"""Makes the DCP checkpoints the tests read, with the real torch.distributed (run by torchrun).

    torchrun --nproc_per_node=2 dcp_job.py OUT

On 2 ranks (gloo, CPU), for a tiny Llama (odd sizes, so shards are uneven):

- ``OUT/fsdp2``: ``fully_shard`` on every block and the root, AdamW after one step,
  ``dcp.save({"model": msd, "optim": osd, "train_state": {...}})`` as torchtitan saves;
  ``OUT/hf-shards`` and ``OUT/hf-consolidated``: its weights through DCP's
  ``HuggingFaceStorageWriter`` (one safetensors shard per rank; plus a consolidated copy);
- ``OUT/dtensor``: a state dict of DTensors sharded ``Shard(0)``, ``Shard(1)`` and
  ``Replicate()`` over the 2 ranks, saved flat (no ``model.`` prefix);
- ``OUT/single``: rank 0 alone (``no_dist=True``), an unsharded model's flat state dict.

Beside each, ``OUT/<name>.full.pt`` holds what the run itself gathered: the full tensors
(``model``), the full optimizer state (``optim``) and the rest, as plain ``torch.save``,
and ``OUT/config.json`` the model's config, so a test can compare bit for bit;
``OUT/fsdp2.losses.json`` what the FSDP2 run computed next (``next_losses``).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import Replicate, Shard, distribute_tensor
from transformers import LlamaConfig, LlamaForCausalLM

CONFIG = dict(vocab_size=301, hidden_size=40, intermediate_size=101, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)


def model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**CONFIG))


def train_step(m: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    ids = torch.arange(24).reshape(2, 12) * 7 % CONFIG["vocab_size"]
    m(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    opt.zero_grad()


def next_losses(m: torch.nn.Module, opt: torch.optim.Optimizer) -> list[str]:
    """What a resumed run computes next: the loss of a new batch, then (after a step that
    uses the AdamW state) that batch's loss again; as float.hex, to compare exactly."""
    ids = torch.arange(24).reshape(2, 12) * 5 % CONFIG["vocab_size"]
    first = m(input_ids=ids, labels=ids).loss
    first.backward()
    opt.step()
    opt.zero_grad()
    with torch.no_grad():
        second = m(input_ids=ids, labels=ids).loss
    return [first.item().hex(), second.item().hex()]


def sharded(m: LlamaForCausalLM, world: int) -> LlamaForCausalLM:
    """``m`` under FSDP2: every block, then the root, over a 1-D mesh of ``world`` ranks."""
    mesh = init_device_mesh("cpu", (world,))
    for block in m.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(m, mesh=mesh)
    return m


def fsdp2(out: Path, rank: int, world: int) -> None:
    m = sharded(model(), world)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    train_step(m, opt)
    msd, osd = get_state_dict(m, opt)
    extra = {"step": 1, "tokens_seen": torch.tensor([24], dtype=torch.int64)}
    dcp.save({"model": msd, "optim": osd, "train_state": extra}, checkpoint_id=out / "fsdp2")
    for name, consolidate in (("hf-shards", False), ("hf-consolidated", True)):  # model weights only: all it takes
        writer = HuggingFaceStorageWriter(str(out / name), save_distributed=True, enable_consolidation=consolidate)
        dcp.save(msd, storage_writer=writer)
    full_m, full_o = get_state_dict(m, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        torch.save({"model": full_m, "optim": full_o, "train_state": extra}, out / "fsdp2.full.pt")
        m.config.to_json_file(out / "config.json")
    losses = next_losses(m, opt)  # after the save: the step changes the state the gathered dicts share
    if rank == 0:
        (out / "fsdp2.losses.json").write_text(json.dumps(losses))


def dtensor(out: Path, rank: int, world: int) -> None:
    mesh = init_device_mesh("cpu", (world,))
    torch.manual_seed(1)
    full = {
        "rows": torch.randn(301, 7),                          # Shard(0), uneven
        "cols": torch.randn(5, 301).to(torch.bfloat16),       # Shard(1), uneven
        "cube": torch.randint(-9, 9, (3, 9, 4), dtype=torch.int32),  # Shard(1) of a 3-d tensor
        "same": torch.randn(6),                               # Replicate: one chunk
        "scalar": torch.tensor(2.5),                          # 0-d, replicated
    }
    places = {"rows": Shard(0), "cols": Shard(1), "cube": Shard(1), "same": Replicate(), "scalar": Replicate()}
    sharded = {k: distribute_tensor(v, mesh, [places[k]]) for k, v in full.items()}
    dcp.save(sharded, checkpoint_id=out / "dtensor")
    gathered = {k: v.full_tensor() for k, v in sharded.items()}  # a collective: every rank takes part
    if rank == 0:
        torch.save({"model": gathered}, out / "dtensor.full.pt")


def single(out: Path) -> None:
    m = model()
    dcp.save(m.state_dict(), checkpoint_id=out / "single", no_dist=True)
    torch.save({"model": m.state_dict()}, out / "single.full.pt")


def exit_now() -> None:
    """Leave without running the interpreter's and C++'s exit-time destructors: torch's
    gloo threads, still joinable then, abort the process now and then ("terminate called
    without an active exception", a rank killed by SIGABRT after its work was done)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    out = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    fsdp2(out, rank, world)
    dtensor(out, rank, world)
    if rank == 0:
        single(out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    exit_now()
