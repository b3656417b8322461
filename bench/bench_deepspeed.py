"""DeepSpeed ZeRO -> safetensors / hf: ckpt-core against DeepSpeed's own ``zero_to_fp32.py``.

    python bench/bench_deepspeed.py --size 2GB [--stage 3] [--world-size 2] [--workers 1 2] [--dir D] [--keep] [--json]

Generates a ZeRO save directory (ZeRO-3 by default) of at least ``--size`` fp32 master
weights (Llama shapes: 4096 wide, a 32000 vocabulary, untied head, as many layers as it
takes) plus Adam moments, partitioned for ``--world-size`` ranks. ckpt-core's deepspeed
writer writes it, in the layout DeepSpeed's engine writes and loads (the plugin's tests
prove it on engine-written checkpoints: DeepSpeed's ``zero_to_fp32.py`` reads the writer's
ZeRO-3 output bit for bit and its engine resumes from it with the same losses). Under ZeRO-3
every parameter straddles the ranks: each is a concatenation of one piece per rank's file.
Then times, each in its own process, its input read once just before (a warm page cache:
the 4.5 GB ``zero_to_fp32`` holds, and the outputs, push the source out of a busy machine's
cache otherwise):

- ``zero_to_fp32``: ``convert_zero_checkpoint_to_fp32_state_dict(..., safe_serialization=True)``
- ``ckpt-core``: ``ckpt-core convert run model.safetensors --to safetensors --allow-loss train_state``
- ``ckpt-core hf``: ``ckpt-core convert run hf --to hf`` (the heads given with ``--option params=``)

  (each once per ``--workers`` count given, with ``--workers N``: the hf shards are written N at once)
- ``start-up``: ``ckpt-core --help`` (what every command pays before it reads a byte)
- ``cp+sync``: copying a file of the fp32 bytes, and syncing it

and checks that the outputs hold the same tensors bit for bit (``ckpt-core diff``). By
hand only, never in CI: it writes about 7x ``--size`` to disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from benchlib import bf16_words, human, nbytes, parse_size, run, summarize, tree_size, warm, work_parent

import ckpt_core
from ckpt_core.dtypes import to_float32
from ckpt_core.model import Checkpoint, OptimizerState, TrainState
from ckpt_core.tensor import Tensor

ZERO_TO_FP32 = ("from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict as c; "
                "import sys; c(sys.argv[1], sys.argv[2], safe_serialization=True)")


HEADS = {"n_head": 32, "n_kv_head": 8}


def f32(shape: tuple[int, ...], seed: int, positive: bool = False) -> Tensor:
    def load() -> np.ndarray:
        values = to_float32(bf16_words(shape, seed), "BF16")
        return np.abs(values) if positive else values
    return Tensor.from_loader("F32", shape, load)


def llama_shapes(size: int) -> dict[str, tuple[int, ...]]:
    """A Llama of at least ``size`` fp32 bytes (4096 wide, GQA 32/8 heads; narrower when the
    embedding and head alone would pass half of ``size``), in module order."""
    vocab, d = 32000, 4096
    while d > 256 and 2 * vocab * d * 4 > size // 2:
        d //= 2
    ff, kv = d * 43 // 16, d // 4  # 11008 and 1024 at 4096 wide

    def layer(i: int) -> dict[str, tuple[int, ...]]:
        h = f"model.layers.{i}."
        return {h + "self_attn.q_proj.weight": (d, d), h + "self_attn.k_proj.weight": (kv, d),
                h + "self_attn.v_proj.weight": (kv, d), h + "self_attn.o_proj.weight": (d, d),
                h + "mlp.gate_proj.weight": (ff, d), h + "mlp.up_proj.weight": (ff, d), h + "mlp.down_proj.weight": (d, ff),
                h + "input_layernorm.weight": (d,), h + "post_attention_layernorm.weight": (d,)}

    layers: dict[str, tuple[int, ...]] = {}
    tail = {"model.norm.weight": (d,), "lm_head.weight": (vocab, d)}
    while 2 * nbytes({"model.embed_tokens.weight": (vocab, d), **layers, **tail}) < size:  # nbytes counts BF16
        layers.update(layer(len(layers) // 9))
    return {"model.embed_tokens.weight": (vocab, d), **layers, **tail}


def make_run(path: Path, size: int, world: int, stage: int) -> int:
    """A ZeRO save directory of at least ``size`` fp32 master bytes; returns the largest tensor's bytes."""
    shapes = llama_shapes(size)
    tensors = {n: f32(s, i * 7919) for i, (n, s) in enumerate(shapes.items())}
    slots = {n: {"step": Tensor.from_numpy(np.float32(10)), "exp_avg": f32(s, i * 7919 + 1),
                 "exp_avg_sq": f32(s, i * 7919 + 2, positive=True)} for i, (n, s) in enumerate(shapes.items())}
    groups = [{"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "params": list(shapes)}]
    state = TrainState(step=10, optimizer=OptimizerState("adamw", slots, groups, extra={"clip_grad": 1.0}),
                       config={"bf16": {"enabled": True}, "zero_optimization": {"stage": stage}},
                       extra={"world_size": world, "zero_stage": stage})
    ckpt_core.save(Checkpoint(tensors=tensors, train_state=state), path, "deepspeed",
                   {"world_size": world, "dtype": "bf16", "stage": stage})
    return max(t.nbytes for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2GB", help="fp32 master weight bytes, at least (default 2GB)")
    parser.add_argument("--stage", type=int, default=3, choices=(1, 2, 3))
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[], help="ckpt-core's --workers, one run of each")
    parser.add_argument("--dir", type=Path, help="where to put the files (not a tmpfs; default /work or .)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-deepspeed-", dir=work_parent(args.dir)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    try:
        src = work / "run"
        largest = make_run(src, size, args.world_size, args.stage)
        fp32_bytes = sum(p.stat().st_size for p in src.rglob("*optim_states.pt")) // 3  # master + 2 moments

        def timed(argv: list[str], input: Path = src, runs: int = 1) -> dict:
            samples = []
            for _ in range(runs):
                warm(input)
                samples.append(run(argv, env))
            return summarize(samples)

        ours, hf, theirs, copy = work / "ckpt-core.safetensors", work / "hf", work / "zero_to_fp32", work / "copy"
        cli = str(Path(sys.executable).with_name("ckpt-core"))
        results = {"zero_to_fp32": timed([sys.executable, "-c", ZERO_TO_FP32, str(src), str(theirs)])}
        for workers in args.workers or [None]:
            flags, label = ([], "") if workers is None else (["--workers", str(workers)], f" w{workers}")
            results[f"ckpt-core{label}"] = timed([cli, "--quiet", "convert", str(src), str(ours), "--to", "safetensors",
                                                  "--allow-loss", "train_state", "--overwrite", *flags])
            results[f"ckpt-core hf{label}"] = timed([cli, "--quiet", "convert", str(src), str(hf), "--to", "hf",
                                                     "--option", f"params={json.dumps(HEADS)}", "--allow-loss",
                                                     "train_state", "--allow-loss", "trainable", "--overwrite", *flags])
        results["start-up"] = summarize([run([cli, "--help"], env) for _ in range(3)])
        # the yardstick, so the median of 3 (a busy machine's writeback once took it from 1.9 s to 6 s)
        results["cp+sync"] = timed(["sh", "-c", f"rm -f {copy} && cp {ours} {copy} && sync"], ours, runs=3)
        same = ckpt_core.diff(ours, theirs).identical and ckpt_core.diff(hf, theirs).identical
        report = {"size": human(size), "stage": args.stage, "world_size": args.world_size,
                  "source_bytes": tree_size(src), "largest_tensor": largest, "fp32_bytes": fp32_bytes, "identical": same,
                  "results": results}
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"ZeRO-{args.stage}, {args.world_size} ranks, {human(fp32_bytes)} fp32 master weights "
              f"({human(tree_size(src))} on disk), largest tensor {human(largest)}; outputs identical: {same}")
        print(f"{'case':16} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10} {'x cp+sync':>10}")
        for name, r in results.items():
            print(f"{name:16} {r['wall']:8.2f} {r['cpu']:8.2f} {human(r['rss']):>10} {r['wall'] / results['cp+sync']['wall']:10.2f}")
        ckpt = min((r for name, r in results.items() if name.startswith("ckpt-core") and "hf" not in name),
                   key=lambda r: r["wall"])
        print(f"targets: peak RSS <= largest + 300 MB: {ckpt['rss'] <= largest + 300 * 10**6}; "
              f"wall <= 1.5x cp+sync: {ckpt['wall'] <= 1.5 * results['cp+sync']['wall']}; "
              f"faster than zero_to_fp32: {ckpt['wall'] < results['zero_to_fp32']['wall']}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
