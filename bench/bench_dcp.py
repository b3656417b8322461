"""torch.distributed.checkpoint (DCP) <-> safetensors: ckpt-core against torch's own
``format_utils`` and against ``cp``+``sync``.

    python bench/bench_dcp.py --size 2GB [--workers 1 2] [--dir D] [--keep] [--json]

Makes, with the real ``torch.distributed`` (this script under ``torchrun
--nproc_per_node=2``, gloo, CPU), a ``--size`` DCP checkpoint as an FSDP2 run saves one: a
transformers Llama (1024 wide, vocab 32000, as many layers as fit) ``fully_shard``-ed on 2
ranks, fp32 weights and AdamW state after one step, ``dcp.save({"model": msd, "optim": osd})``
(``--size`` counts weights + both moments). Then times, each in its own process from a
warm page cache:

- DCP -> safetensors: ``ckpt-core convert step/ model.safetensors --to safetensors
  --allow-loss train_state`` (once per ``--workers`` value),
  ``dcp_to_torch_save(step/, full.pt)`` (all of the state, as it only can), and ``cp`` of
  ckpt-core's output + ``sync``: the same bytes moved by the kernel alone;
- HF -> DCP: the model as an HF directory (``config.json`` and the safetensors output, or its
  ``torch.save`` as ``pytorch_model.bin``): the ``.bin`` to a one-rank DCP directory by
  ``torch_save_to_dcp`` and by ``ckpt-core convert hf-bin/ init/ --to dcp``; the safetensors
  one to 2 ranks by ckpt-core (``world_size=2``), each once per ``--workers`` value;
  ``cp`` of the ``.bin`` + ``sync``;

and checks that the outputs agree bit for bit (ckpt-core's safetensors against the model
``dcp_to_torch_save`` wrote; each DCP directory, read by ckpt-core, against the source).
ckpt-core and ``cp`` cases run ``--repeat`` times (medians), the torch ones once.
Targets (issue 14): peak RSS <= the largest tensor + 300 MB (>= 10x below
dcp_to_torch_save), wall <= 1.5 x cp+sync. By hand only: it writes about 3x ``--size``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchlib import human, parse_size, remove, run, summarize, tree_size, warm, work_parent

WIDTH, VOCAB, INTERMEDIATE, HEADS, KV_HEADS = 1024, 32000, 2816, 16, 4
TO_TORCH_SAVE = ("import sys; from torch.distributed.checkpoint.format_utils import dcp_to_torch_save as f; "
                 "f(sys.argv[1], sys.argv[2])")
TO_DCP = ("import sys; from torch.distributed.checkpoint.format_utils import torch_save_to_dcp as f; "
          "f(sys.argv[1], sys.argv[2])")


def llama_config(size: int) -> dict:
    """A Llama config whose fp32 weights and two AdamW moments take about ``size`` bytes."""
    embed = 2 * VOCAB * WIDTH  # embed_tokens and an untied lm_head
    layer = 2 * WIDTH * WIDTH + 2 * WIDTH * (WIDTH // HEADS * KV_HEADS) + 3 * WIDTH * INTERMEDIATE + 2 * WIDTH
    layers = max(1, math.ceil((size / 12 - embed - WIDTH) / layer))
    return dict(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=INTERMEDIATE, num_hidden_layers=layers,
                num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, tie_word_embeddings=False)


def save_job(out: Path, size: int) -> None:
    """Under torchrun: the FSDP2 checkpoint (see the module docstring). Weights are made on
    the meta device and only each rank's shard is allocated, filled from a seeded generator."""
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from transformers import LlamaConfig, LlamaForCausalLM

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**llama_config(size)))
    mesh = init_device_mesh("cpu", (world,))
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    model.to_empty(device="cpu")
    gen = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        for p in model.parameters():
            p.to_local().normal_(0, 0.02, generator=gen)
            p.grad = p.detach() * 0.01
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    opt.step()
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=out)
    if rank == 0:
        (out.parent / "largest").write_text(str(max(p.numel() * 4 for p in model.parameters())))
        model.config.to_json_file(out.parent / "config.json")
    dist.barrier()
    dist.destroy_process_group()


def repeat(times: int, output: Path, case) -> dict[str, float]:
    """``case()`` run ``times`` times, ``output`` removed before each (kept after the last)."""
    samples = []
    for _ in range(times):
        remove(output)
        samples.append(case())
    return summarize(samples)


def same_model(safetensors: Path, full_pt: Path) -> bool:
    """ckpt-core's safetensors holds exactly the model ``dcp_to_torch_save`` wrote."""
    import torch
    from safetensors.torch import load_file

    ours = load_file(safetensors)
    theirs = torch.load(full_pt, mmap=True, weights_only=True)["model"]
    return set(ours) == set(theirs) and all(
        ours[k].dtype == t.dtype and torch.equal(ours[k].view(torch.uint8), t.contiguous().view(torch.uint8))
        for k, t in theirs.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GB", help="bytes of fp32 weights + both AdamW moments (default 2GB)")
    parser.add_argument("--workers", type=int, nargs="*", default=[],
                        help="ckpt-core --workers values to time, each case once per value (default: none given)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each ckpt-core and cp case (median; default 3)")
    parser.add_argument("--dir", type=Path, help="where to put the files (not a tmpfs; default /work or .)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--save-job", type=Path, help=argparse.SUPPRESS)  # torchrun's ranks run this
    args = parser.parse_args()
    size = parse_size(args.size)
    if args.save_job:
        save_job(args.save_job, size)
        return
    import ckpt_core

    work = Path(tempfile.mkdtemp(prefix="bench-dcp-", dir=work_parent(args.dir)))
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # time ckpt-core as installed (bytecode cached), not compiling itself
    cli = str(Path(sys.executable).with_name("ckpt-core"))
    workers = args.workers or [None]
    try:
        src = work / "step"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        __file__, "--size", args.size, "--save-job", str(src)], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        largest = int((work / "largest").read_text())
        warm(src)
        ours, theirs, copy = work / "model.safetensors", work / "full.pt", work / "copy"
        run([cli, "--quiet", "convert", str(src), str(ours), "--to", "safetensors", "--allow-loss", "train_state"], env)
        remove(ours)  # (untimed: caches ckpt-core's bytecode)
        results = {}
        for n in workers:
            flag = [] if n is None else ["--workers", str(n)]
            results[f"ckpt-core{'' if n is None else f' -w{n}'}"] = repeat(args.repeat, ours, lambda: run(
                [cli, "--quiet", "convert", str(src), str(ours), "--to", "safetensors", "--allow-loss", "train_state",
                 *flag], env))
        results["dcp_to_torch_save"] = summarize([run([sys.executable, "-c", TO_TORCH_SAVE, str(src), str(theirs)], env)])
        results["cp+sync"] = repeat(args.repeat, copy, lambda: run(["sh", "-c", f"cp {ours} {copy} && sync"], env))
        identical = same_model(ours, theirs)
        for p in (theirs, copy):
            remove(p)

        hf_st, hf_bin = work / "hf-st", work / "hf-bin"  # the HF side: one model, as safetensors and as torch.save
        for d in (hf_st, hf_bin):
            d.mkdir()
            shutil.copy(work / "config.json", d)
        ours.rename(hf_st / "model.safetensors")
        pt = hf_bin / "pytorch_model.bin"
        subprocess.run([sys.executable, "-c", "import sys, torch; from safetensors.torch import load_file; "
                        "torch.save(load_file(sys.argv[1]), sys.argv[2])", str(hf_st / "model.safetensors"), str(pt)],
                       check=True)
        warm(work)
        into = {"torch_save_to_dcp": work / "torch-init"}
        back = {"torch_save_to_dcp": summarize([run([sys.executable, "-c", TO_DCP, str(pt), str(into["torch_save_to_dcp"])],
                                                    env)])}
        for n in workers:
            flag, tag = ([], "") if n is None else (["--workers", str(n)], f" -w{n}")
            into[f"ckpt-core .bin{tag}"] = bin_out = work / f"init-bin{tag.strip()}"
            into[f"ckpt-core st w2{tag}"] = st_out = work / f"init-st{tag.strip()}"
            back[f"ckpt-core .bin{tag}"] = repeat(args.repeat, bin_out, lambda: run(
                [cli, "--quiet", "convert", str(hf_bin), str(bin_out), "--to", "dcp", "--allow-loss", "extra", *flag], env))
            back[f"ckpt-core st w2{tag}"] = repeat(args.repeat, st_out, lambda: run(
                [cli, "--quiet", "convert", str(hf_st), str(st_out), "--to", "dcp", "--option", "world_size=2",
                 "--allow-loss", "extra", *flag], env))
        back["cp+sync"] = repeat(args.repeat, copy, lambda: run(["sh", "-c", f"cp {pt} {copy} && sync"], env))
        back_identical = all(ckpt_core.diff(hf_st / "model.safetensors", d).identical for d in into.values())
        report = {"size": human(size), "source_bytes": tree_size(src), "largest_tensor": largest,
                  "safetensors_bytes": tree_size(hf_st / "model.safetensors"), "identical": identical, "to_safetensors": results,
                  "dcp_identical": back_identical, "to_dcp": back}
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"FSDP2 DCP, 2 ranks, {human(tree_size(src))} (weights + AdamW), model {human(report['safetensors_bytes'])}, "
              f"largest tensor {human(largest)}; safetensors = dcp_to_torch_save's model: {identical}")
        for title, rows in (("DCP -> safetensors", results), ("HF (.pt / safetensors) -> DCP", back)):
            print(f"{title:32} {'wall s':>8} {'best s':>8} {'cpu s':>8} {'peak RSS':>10} {'x cp+sync':>10} {'RSS - largest':>14}")
            for name, r in rows.items():
                print(f"  {name:30} {r['wall']:8.2f} {r['wall_min']:8.2f} {r['cpu']:8.2f} {human(r['rss']):>10} "
                      f"{r['wall'] / rows['cp+sync']['wall']:10.2f} {human(max(0, r['rss'] - largest)):>14}")
        print(f"every DCP directory written reads back as the safetensors model: {back_identical}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
