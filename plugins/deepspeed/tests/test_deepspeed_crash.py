"""Writing DeepSpeed checkpoints from a real DeepSpeed run, killed at random instants.

The shared crash suite (tests/test_crash.py) kills the deepspeed writer taking its plain
safetensors source (a fresh optimizer state, ``FormatSpec.write_options``); what it cannot
express is a source that is a DeepSpeed run, whose Adam moments are file ranges of the
source's partitions. The same checks run here on one (its ``kill_while_writing``): the
destination absent or complete, the source unchanged, only the killed writer's temporary
left, and the next write sweeps it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[3] / "tests"))
import test_crash as crash  # noqa: E402  (the shared suite's helpers)


@pytest.mark.parametrize("options", [{"stage": 3, "world_size": 1}, {"universal": True}], ids=["stage3-ws1", "universal"])
def test_write_from_a_deepspeed_run_killed_at_random_instants(ds_runs, tmp_path, options):
    operation = f"deepspeed-run-{options}"
    landed = crash.kill_while_writing(tmp_path, ds_runs["z2-fp32-ws2"], operation, ("cli", "convert"), "deepspeed",
                                      "run", 5, False, options)
    assert landed[0], f"{operation}: the kill at instant 0 came after the write had finished"
