"""Which DeepSpeed runs the tests make, and running ``deepspeed_train.py`` under torchrun.

``deepspeed_train.py`` runs under ``torchrun`` on CPU (gloo): one job of 2 ranks and one of
1 rank, each saving several runs (see CASES). DeepSpeed compiles a small op the first time
(about 2 minutes); it is kept in ``~/.cache/ckpt-core/torch_extensions`` (or
``$CKPT_CORE_TORCH_EXTENSIONS``), so later sessions take about a minute for every run.
``CKPT_CORE_DEEPSPEED_MATRIX=full`` makes the whole matrix: ZeRO 1, 2, 3 x fp32, bf16 x
world size 1, 2, no ZeRO (stage 0) and DeepSpeed's BF16_Optimizer at both world sizes.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
MATRIX_VAR = "CKPT_CORE_DEEPSPEED_MATRIX"
FULL = {ws: ["z0-fp32"] + [f"z{s}-{d}" for s in (1, 2, 3) for d in ("fp32", "bf16", "fp16")] + ["bf16opt"]
        for ws in (1, 2)}
# Every stage (0: no ZeRO) and dtype (fp16: a dynamic loss scaler), both world sizes, the BF16_Optimizer variant.
CI = {2: ["z0-fp32", "z1-bf16", "z2-fp32", "z2-fp16", "z3-fp32", "z3-bf16", "bf16opt"], 1: ["z1-fp32", "z3-bf16"]}
CASES = FULL if os.environ.get(MATRIX_VAR) == "full" else CI
RUNS = [f"{case}-ws{ws}" for ws, cases in CASES.items() for case in cases]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(world: int, *args) -> None:
    """``deepspeed_train.py *args`` on ``world`` CPU ranks (gloo), DeepSpeed's op cache kept."""
    cache = Path(os.environ.get("CKPT_CORE_TORCH_EXTENSIONS", Path.home() / ".cache" / "ckpt-core" / "torch_extensions"))
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TORCH_EXTENSIONS_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}", f"--master_port={_free_port()}",
               str(HERE / "deepspeed_train.py"), *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"DeepSpeed (world size {world}, {args[:2]}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}")


def zero_to_fp32(run: Path) -> dict:
    """DeepSpeed's own ``zero_to_fp32.py`` rebuild of a save directory's fp32 weights."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        found = get_fp32_state_dict_from_zero_checkpoint(str(run))
    return {k: v.contiguous() for k, v in found.items()}  # ZeRO-3 gives lazy gathered tensors
