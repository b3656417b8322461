"""Fixtures: DCP checkpoints made once per test session by the real torch.distributed
(``dcp_job.py`` under ``torchrun --nproc_per_node=2``, gloo, CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

JOB = Path(__file__).with_name("dcp_job.py")


@pytest.fixture(scope="session")
def dcp_run(tmp_path_factory) -> Path:
    """The job's output folder: ``fsdp2/``, ``dtensor/``, ``single/`` and each one's
    ``<name>.full.pt`` (what the run gathered), plus the model's ``config.json``."""
    pytest.importorskip("torch.distributed.checkpoint")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("dcp")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(JOB), str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out
