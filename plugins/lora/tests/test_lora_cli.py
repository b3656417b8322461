"""The plugin through the ckpt-core command: detect, plugins, convert with options, warnings, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from ckpt_core import api
from ckpt_core.cli import main


@pytest.fixture
def ckpt(capsys):
    """Run ``ckpt-core ARGS...`` in-process; the result has returncode, stdout, stderr."""
    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return SimpleNamespace(returncode=exit_info.value.code, stdout=out, stderr=err)
    return run


def test_cli_detect_as_a_real_process(fork):
    out = subprocess.run([sys.executable, "-m", "ckpt_core", "detect", str(fork["dir"] / "lora.pt"), "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    best = json.loads(out.stdout)["detections"][0]
    assert best["format"] == "lora-nanogpt" and "attn rank 4" in best["reason"]


def test_cli_plugins_lists_both_formats(ckpt):
    listing = ckpt("plugins", "--json")
    assert listing.returncode == 0 and "lora-nanogpt" in listing.stdout and "peft" in listing.stdout


def test_cli_convert_options_warnings_and_refusals(ckpt, fork, tmp_path):
    src = fork["dir"] / "lora.pt"
    refused = ckpt("convert", src, tmp_path / "m.safetensors", "--to", "safetensors", "--allow-loss", "train_state")
    assert refused.returncode == 7 and "--merge-adapters" in refused.stderr and "transformer.wte.weight" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "m.safetensors").exists()

    old = ckpt("convert", src, tmp_path / "m.safetensors", "--to", "safetensors", "--allow-loss", "train_state",
               "--option", "merge=true")
    assert old.returncode == 2 and old.stderr == ("ckpt-core: error: --option merge=true is gone: merge with --merge-adapters "
                                                  "(and --option tied_head=tie to keep a tied head tied)\n")
    assert not (tmp_path / "m.safetensors").exists()
    merged = ckpt("convert", src, tmp_path / "m.safetensors", "--to", "safetensors", "--allow-loss", "train_state",
                  "--merge-adapters", "--option", "tied_head=tie")
    assert merged.returncode == 0, merged.stderr
    assert api.load(tmp_path / "m.safetensors").ties == {"lm_head.weight": "transformer.wte.weight"}

    padded = ckpt("convert", src, tmp_path / "r8.pt", "--to", "lora-nanogpt", "--option", "rank=8")
    assert padded.returncode == 2 and "rank_change=pad" in padded.stderr
    padded = ckpt("convert", src, tmp_path / "r8.pt", "--to", "lora-nanogpt", "--option", "rank=8", "--option", "rank_change=pad")
    assert padded.returncode == 0, padded.stderr
    assert torch.load(tmp_path / "r8.pt", weights_only=True)["model_args"]["attn_lora_rank"] == 8

    bad = ckpt("convert", src, tmp_path / "x.pt", "--to", "lora-nanogpt", "--option", "targets=mlp", "--option", "rank=2")
    assert bad.returncode == 2 and "targets" in bad.stderr
    bad = ckpt("convert", src, tmp_path / "x.pt", "--to", "lora-nanogpt", "--option", "tied_head=tie")
    assert bad.returncode == 2 and "--merge-adapters" in bad.stderr
    bad = ckpt("convert", src, tmp_path / "x.pt", "--to", "canonical", "--merge-adapters", "--option", "tied_head=both")
    assert bad.returncode == 2 and "untie, tie" in bad.stderr
    assert not (tmp_path / "x.pt").exists()


def test_cli_standard_to_lora(ckpt, plain, tmp_path):
    out = ckpt("convert", plain["path"], tmp_path / "lora.pt", "--to", "lora-nanogpt", "--option", "rank=16",
               "--option", "alpha=1.0", "--option", "targets=attn,embedding")
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("warning: optimizer state dropped") == 1
    info = ckpt("detect", tmp_path / "lora.pt")
    assert "attn rank 16" in info.stdout and "embedding rank 16" in info.stdout


def test_works_as_the_only_plugin(ckpt_plugins_only, fork, tmp_path):
    reg = ckpt_plugins_only("lora")
    assert sorted(reg.formats) == ["canonical", "lora-nanogpt", "peft", "safetensors"]
    assert "gpt" in reg.families and not [p for p in reg.plugins if p.error]
    ck = api.convert(fork["dir"] / "lora.pt", tmp_path / "canon", "canonical")
    assert len(ck.adapters) == 3


def test_reading_a_fork_checkpoint_never_imports_torch(fork, tmp_path):
    script = (
        "import sys, ckpt_core\n"
        f"ck = ckpt_core.load({str(fork['dir'] / 'lora.pt')!r})\n"
        f"ckpt_core.save(ck, {str(tmp_path / 'canon')!r}, 'canonical')\n"
        "print(len(ck.adapters) > 0, ck.train_state.optimizer is not None, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "False"]
