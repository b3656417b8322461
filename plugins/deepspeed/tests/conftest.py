"""Real DeepSpeed checkpoints, made once per test session by DeepSpeed's own engine
(which runs, how: ``deepspeed_runs.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("deepspeed", reason="deepspeed is not installed; the DeepSpeed fixtures train with its engine")

from deepspeed_runs import CASES, RUNS, torchrun  # noqa: E402


@pytest.fixture(scope="session")
def ds_runs(tmp_path_factory) -> dict[str, Path]:
    """Run name (``z2-bf16-ws2``) -> its save directory (``latest``, ``global_step1``,
    ``global_step2``, ``expected.pt``)."""
    out = tmp_path_factory.mktemp("deepspeed-runs")
    for ws, cases in CASES.items():
        torchrun(ws, out, *cases)
    return {name: out / name for name in RUNS}
