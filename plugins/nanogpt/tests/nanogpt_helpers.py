"""Small helpers the nanogpt plugin's tests share: the CLI in-process, torch-level comparisons."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ckpt_core import cli

PREFIX = "_orig_mod."


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """``ckpt-core ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return done.value.code, out, err


def run_json(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def load(path: Path) -> dict:
    """The file as torch loads it (weights only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def state_dict(path: Path) -> dict:
    """The model state dict of a checkpoint dict or bare state dict, without ``_orig_mod.``."""
    obj = load(path)
    sd = obj["model"] if "model" in obj and isinstance(obj["model"], dict) else obj
    return {k.removeprefix(PREFIX): v for k, v in sd.items()}


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def same_tree(a, b) -> bool:
    """Plain data equal, tensors bit for bit (NaN included)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and same_bytes(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same_tree(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def shares_storage(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def copy_to(src: Path, directory: Path, name: str | None = None) -> Path:
    """A copy of ``src`` in ``directory`` (tests never touch the session's files)."""
    dst = directory / (name or src.name)
    shutil.copy2(src, dst)
    return dst
