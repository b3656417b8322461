"""The process tests/test_crash.py kills: one ckpt-core operation, announced by a ``ready`` line.

    python crash_worker.py [--import-torch] cli ARG...                  ckpt-core ARG... (the CLI's own main)
    python crash_worker.py [--import-torch] save SRC DST FORMAT [JSON]  ckpt_core.save(load(SRC), DST, FORMAT, **JSON)
    python crash_worker.py [--import-torch] step RUN SRC STEP           add step STEP to the MLX run directory RUN

Imports and plugin loading come before ``ready`` and ``done`` follows the operation (both
printed on stdout), so the test can time the operation alone, without start-up or the
interpreter's exit, and spread its kill instants over it. ``--import-torch`` imports torch
before ``ready``, which a torch-pickle writer would otherwise import while writing.

``step`` saves a new checkpoint into a run the way an MLX training loop built on ckpt-core
would: the weights file with ``ckpt_core.save`` (format mlx, weights only), then the state
JSON that completes it, each through the core's atomic writer.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ckpt_core
from ckpt_core import atomic, cli
from ckpt_core.plugins import registry


def save_step(run: Path, src: Path, step: int) -> None:
    """Write step ``step`` of ``src``'s weights into ``run``: weights first, state JSON last
    (a step saved again after a crash replaces what the crash left of it)."""
    weights = run / f"step_{step:06d}.safetensors"
    ckpt_core.save(ckpt_core.load(src), weights, "mlx", {"weights_only": True}, overwrite=True)
    state = weights.with_name(f"step_{step:06d}_state.json")
    with atomic.atomic_output(state, overwrite=True) as tmp:
        tmp.write_text(json.dumps({"step": step, "epoch": 1, "metrics": {"loss": 1.0 / step}}))


def main(argv: list[str]) -> None:
    if argv[0] == "--import-torch":
        import torch  # noqa: F401
        argv = argv[1:]
    mode, args = argv[0], argv[1:]
    registry()  # load the plugins now: part of starting up, not of the operation
    print("ready", flush=True)
    code = 0
    if mode == "cli":
        try:
            cli.main(args)
        except SystemExit as e:
            code = e.code
    elif mode == "save":
        src, dst, fmt = args[:3]
        kwargs = json.loads(args[3]) if len(args) > 3 else {}
        ckpt_core.save(ckpt_core.load(src), dst, fmt, **kwargs)
    elif mode == "step":
        save_step(Path(args[0]), Path(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print("done", flush=True)
    raise SystemExit(code)


if __name__ == "__main__":
    main(sys.argv[1:])
