"""Fixtures: run directories written by real moshi models (built once, copied per test)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from moshi_ttt_reference import built, copy_run  # noqa: E402,F401


@pytest.fixture
def lora_run(tmp_path) -> Path:
    return copy_run("lora", tmp_path / "lora-run")


@pytest.fixture
def full_run(tmp_path) -> Path:
    return copy_run("full", tmp_path / "full-run")


@pytest.fixture
def lora_model():
    return built("lora")[1]


@pytest.fixture
def full_model():
    return built("full")[1]
