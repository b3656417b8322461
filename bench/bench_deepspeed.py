"""DeepSpeed ZeRO -> safetensors: ckpt-core against DeepSpeed's own ``zero_to_fp32.py``.

    python bench/bench_deepspeed.py --size 1GB [--world-size 2] [--dir D] [--keep] [--json]

Generates a ZeRO-2 save directory of ``--size`` fp32 master weights (nanoGPT shapes, 4096
wide) plus Adam moments and bf16 module weights, partitioned for ``--world-size`` ranks
(written by ckpt-core's deepspeed writer, whose output DeepSpeed's engine loads: see
plugins/deepspeed/tests), then times, each in its own process from a warm page cache:

- ``zero_to_fp32``: ``convert_zero_checkpoint_to_fp32_state_dict(..., safe_serialization=True)``
- ``ckpt-core``: ``ckpt-core convert run model.safetensors --to safetensors --allow-loss train_state``
- ``cp+sync``: copying a file of the fp32 bytes, and syncing it

and checks that both outputs hold the same tensors bit for bit (``ckpt-core diff``). By
hand only, never in CI: it writes about 4x ``--size`` to disk.
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
from benchlib import bf16_words, gpt_shapes, human, parse_size, run, summarize, tree_size, warm, work_parent

import ckpt_core
from ckpt_core.dtypes import to_float32
from ckpt_core.model import Checkpoint, OptimizerState, TrainState
from ckpt_core.tensor import Tensor

ZERO_TO_FP32 = ("from deepspeed.utils.zero_to_fp32 import convert_zero_checkpoint_to_fp32_state_dict as c; "
                "import sys; c(sys.argv[1], sys.argv[2], safe_serialization=True)")


def f32(shape: tuple[int, ...], seed: int, positive: bool = False) -> Tensor:
    def load() -> np.ndarray:
        values = to_float32(bf16_words(shape, seed), "BF16")
        return np.abs(values) if positive else values
    return Tensor.from_loader("F32", shape, load)


def make_run(path: Path, size: int, world: int) -> int:
    """A ZeRO-2 save directory of ``size`` fp32 master bytes; returns the largest tensor's bytes."""
    _, shapes = gpt_shapes(size // 2)  # BF16 bytes -> half as many parameters as fp32 bytes
    tensors = {n: f32(s, i * 7919) for i, (n, s) in enumerate(shapes.items())}
    slots = {n: {"step": Tensor.from_numpy(np.float32(10)), "exp_avg": f32(s, i * 7919 + 1),
                 "exp_avg_sq": f32(s, i * 7919 + 2, positive=True)} for i, (n, s) in enumerate(shapes.items())}
    groups = [{"lr": 6e-4, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.1, "params": list(shapes)}]
    state = TrainState(step=10, optimizer=OptimizerState("adamw", slots, groups, extra={"clip_grad": 1.0}),
                       config={"bf16": {"enabled": True}, "zero_optimization": {"stage": 2}},
                       extra={"world_size": world, "zero_stage": 2})
    ckpt_core.save(Checkpoint(tensors=tensors, train_state=state), path, "deepspeed", {"world_size": world, "dtype": "bf16"})
    return max(t.nbytes for t in tensors.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1GB", help="fp32 master weight bytes (default 1GB)")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--dir", type=Path, help="where to put the files (not a tmpfs; default /work or .)")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size)
    work = Path(tempfile.mkdtemp(prefix="bench-deepspeed-", dir=work_parent(args.dir)))
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    try:
        src = work / "run"
        largest = make_run(src, size, args.world_size)
        fp32_bytes = sum(p.stat().st_size for p in src.rglob("*optim_states.pt")) // 3  # master + 2 moments
        warm(src)
        ours, theirs, copy = work / "ckpt-core.safetensors", work / "zero_to_fp32", work / "copy"
        cli = str(Path(sys.executable).with_name("ckpt-core"))
        results = {
            "zero_to_fp32": summarize([run([sys.executable, "-c", ZERO_TO_FP32, str(src), str(theirs)], env)]),
            "ckpt-core": summarize([run([cli, "--quiet", "convert", str(src), str(ours), "--to", "safetensors",
                                         "--allow-loss", "train_state"], env)]),
        }
        results["cp+sync"] = summarize([run(["sh", "-c", f"cp {ours} {copy} && sync"], env)])
        same = ckpt_core.diff(ours, theirs).identical
        report = {"size": human(size), "world_size": args.world_size, "source_bytes": tree_size(src),
                  "largest_tensor": largest, "fp32_bytes": fp32_bytes, "identical": same, "results": results}
        if args.json:
            print(json.dumps(report, indent=2))
            return
        print(f"ZeRO-2, {args.world_size} ranks, {human(fp32_bytes)} fp32 master weights ({human(tree_size(src))} on disk), "
              f"largest tensor {human(largest)}; outputs identical: {same}")
        print(f"{'case':14} {'wall s':>8} {'cpu s':>8} {'peak RSS':>10} {'x cp+sync':>10}")
        for name, r in results.items():
            print(f"{name:14} {r['wall']:8.2f} {r['cpu']:8.2f} {human(r['rss']):>10} {r['wall'] / results['cp+sync']['wall']:10.2f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
