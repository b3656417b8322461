"""Run directories: listing by step, latest complete, prune, a given step, training state
without weights, and resuming training exactly from what the plugin writes."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

import ckpt_core
from ckpt_core import CorruptInput, NotFound, UsageError
from ckpt_core.cli import main

import moshi_ttt_reference as reference

CONSOLIDATED = "checkpoints/checkpoint_000300/consolidated"


def cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as caught:
        main(list(map(str, args)))
    out = capsys.readouterr()
    return caught.value.code, out.out, out.err


def _add_weightless_and_early(run):
    """checkpoint_000500 without a weights file; checkpoint_000050 created last (newest ctime)."""
    late = run / "checkpoints/checkpoint_000500/consolidated"
    late.mkdir(parents=True)
    shutil.copy(run / CONSOLIDATED / "config.json", late / "config.json")
    shutil.copytree(run / "checkpoints/checkpoint_000100", run / "checkpoints/checkpoint_000050")
    os.utime(run / "checkpoints/checkpoint_000050", (2e9, 2e9))


def test_ls_orders_by_step_and_marks_incomplete_ones(lora_run, capsys):
    _add_weightless_and_early(lora_run)
    code, out, _ = cli(capsys, "ls", lora_run, "--json")
    assert code == 0
    rows = [(c["step"], c["complete"]) for c in json.loads(out)["checkpoints"]]
    assert rows == [(50, True), (100, True), (200, True), (300, True), (400, False), (500, False)]
    notes = {c["step"]: c["note"] for c in json.loads(out)["checkpoints"]}
    assert "tmp.consolidated" in notes[400] and "no consolidated.safetensors or lora.safetensors" in notes[500]
    code, out, _ = cli(capsys, "latest", lora_run)
    assert out.strip() == str(lora_run / "checkpoints/checkpoint_000300")
    assert ckpt_core.load(lora_run).train_state.step == 300


def test_prune_keeps_the_newest_complete_and_every_incomplete_one(lora_run, capsys):
    _add_weightless_and_early(lora_run)
    code, _, err = cli(capsys, "prune", lora_run, "--keep", "0")
    assert code == 2 and "at least 1" in err
    code, out, _ = cli(capsys, "prune", lora_run, "--keep", "2", "--dry-run")
    assert code == 0 and len(list((lora_run / "checkpoints").iterdir())) == 6
    code, out, _ = cli(capsys, "prune", lora_run, "--keep", "1")
    assert code == 0
    left = sorted(p.name for p in (lora_run / "checkpoints").iterdir())
    assert left == ["checkpoint_000300", "checkpoint_000400", "checkpoint_000500"]
    assert ckpt_core.latest(lora_run).step == 300


def test_a_given_step_is_read_and_an_incomplete_or_missing_one_is_refused(lora_run, capsys):
    older = ckpt_core.load(lora_run, options={"step": 200})
    newer = ckpt_core.load(lora_run)
    assert (older.train_state.step, newer.train_state.step) == (200, 300)
    report = ckpt_core.diff(older, newer)
    changed = {r.name for r in report.tensors if r.status != "same"}
    assert "transformer.layers.1.ttt.W1" in changed and "text_linear.weight::lora_b" in changed
    with pytest.raises(CorruptInput, match="interrupted save"):
        ckpt_core.load(lora_run, options={"step": 400})
    with pytest.raises(NotFound, match="no checkpoint at step 999"):
        ckpt_core.load(lora_run, options={"step": 999})
    with pytest.raises(UsageError):
        ckpt_core.load(lora_run / CONSOLIDATED, options={"step": 300})
    code, _, err = cli(capsys, "inspect", lora_run / "checkpoints/checkpoint_000400")
    assert code == 5 and "interrupted" in err


def test_train_state_reads_step_optimizer_and_ttt_settings_without_the_weights(lora_run):
    weights = lora_run / CONSOLIDATED / "lora.safetensors"
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header:] = bytes(len(data) - header)  # weights zeroed: a weights read would show it, the state does not care
    weights.write_bytes(bytes(data))
    ts = ckpt_core.train_state(lora_run)
    assert ts.step == 300
    assert ts.optimizer.kind == "adamw" and len(ts.optimizer.param_state) == 62
    assert ts.optimizer.groups[0]["lr"] == 1e-3
    ttt = ts.config["training_config"]["ttt"]
    assert (ttt["layers"], ttt["base_lr"], ttt["mini_batch_size"], ttt["gating_alpha_init"]) == ("1", 1.0, 4, 0.1)
    assert ts.config["args"]["num_ckpt_keep"] == 3
    assert ckpt_core.train_state(lora_run / "checkpoints/checkpoint_000100").step == 100


def test_resume_from_what_the_plugin_writes_continues_training_exactly(tmp_path):
    run = tmp_path / "run"
    model, optimizer = reference.make_run(run, save_adapters=True, steps=(100, 200), interrupted_step=None,
                                          dtype=torch.float32)
    base = reference.base_model_file(model, tmp_path / "model.safetensors", dtype=torch.float32)
    ckpt_core.convert(run, tmp_path / "copy", "moshi")  # the run as the plugin writes it
    ckpt_core.convert(tmp_path / "copy", tmp_path / "full", "moshi", {"base": str(base), "init_state": True})

    resumed = reference.tiny_lm(seed=99)
    resumed.load_state_dict(load_file(tmp_path / "full" / "consolidated.safetensors"), strict=True)
    for name, p in resumed.named_parameters():
        p.requires_grad_("lora_" in name or "seq_modeling_block.ttt_layer" in name or "ssm_gating" in name)
    resumed_opt = torch.optim.AdamW([p for p in resumed.parameters() if p.requires_grad], lr=1e-3)
    state = torch.load(tmp_path / "copy/checkpoints/checkpoint_000200/consolidated/optimizer_state.pt", weights_only=True)
    assert state["step"] == 200
    resumed_opt.load_state_dict(state["optimizer"])

    reference.train_steps(model, optimizer, 2)
    reference.train_steps(resumed, resumed_opt, 2)
    for (name, a), (_, b) in zip(model.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
