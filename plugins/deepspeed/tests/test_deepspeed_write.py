"""ckpt-core writes DeepSpeed ZeRO checkpoints that DeepSpeed's engine resumes from, at
another world size or stage than the source's (which DeepSpeed itself refuses: "Automatic
adjustment of ZeRO's optimizer state partitioning with a new world size is not currently
supported"). The resumed run's next losses are compared with those of the uninterrupted
run, both computed this session on data every rank shares."""

from __future__ import annotations


import pytest
import torch
from ckpt_core import torchfile
from deepspeed_runs import torchrun, zero_to_fp32

import ckpt_core
from ckpt_core.compare import differences

# (source run, --option values, the config the fresh engine trains with, relative tolerance
# of its first and second next loss: 0 is bit for bit). Across ZeRO stages the engines
# compute differently (ZeRO-3 sums gradients in another order, keeps frozen bf16 weights
# in bf16), and bf16 gradients averaged over another number of ranks round differently.
RESUMES = {
    1: [("z2-fp32-ws2", {"world_size": 1}, "z2-fp32", 0, 0),
        ("z3-fp32-ws2", {"world_size": 1, "stage": 1}, "z1-fp32", 0, 1e-6),
        ("z3-bf16-ws2", {"world_size": 1, "stage": 2}, "z2-bf16", 1e-4, 1e-3),
        ("z2-fp16-ws2", {"world_size": 1}, "z2-fp16", 0, 1e-3),
        ("z3-bf16-ws2", {"world_size": 1}, "z3-bf16", 0, 0)],
    2: [("z1-fp32-ws1", {"world_size": 2, "stage": 2}, "z2-fp32", 0, 1e-6),
        ("z1-bf16-ws2", {}, "z1-bf16", 0, 0),
        ("z0-fp32-ws2", {"stage": 2}, "z2-fp32", 0, 1e-6),
        ("z2-fp32-ws2", {"stage": 3}, "z3-fp32", 0, 0)],
}


@pytest.fixture(scope="session")
def resumed(ds_runs, tmp_path_factory):
    """(source, options) -> (the source's next losses, the resumed engine's result)."""
    out = tmp_path_factory.mktemp("deepspeed-resumed")
    found = {}
    for ws, cases in RESUMES.items():
        args = []
        for i, (source, options, config, *_) in enumerate(cases):
            converted = out / f"{source}-{i}-to-ws{ws}"
            ckpt_core.convert(ds_runs[source], converted, "deepspeed", options)
            args += [out / f"{source}-{i}.pt", converted, config]
        torchrun(ws, "resume", *args)
        for i, (source, options, *_) in enumerate(cases):
            expected = torch.load(ds_runs[source] / "expected.pt", weights_only=True)["next_losses"]
            found[source, str(options)] = expected, torch.load(out / f"{source}-{i}.pt", weights_only=True), out / f"{source}-{i}-to-ws{ws}"
    return found


@pytest.mark.parametrize("source, options, config, rel_first, rel_second", [c for cases in RESUMES.values() for c in cases],
                         ids=[f"{c[0]}-to-{c[2]}-ws{ws}" for ws, cases in RESUMES.items() for c in cases])
def test_deepspeed_resumes_with_the_same_next_losses(resumed, source, options, config, rel_first, rel_second):
    """The first loss after resuming tests the weights, the second the optimizer state."""
    expected, got, _ = resumed[source, str(options)]
    assert got["global_steps"] == 4 and got["client"] == {"epoch": 0, "note": source.rsplit("-", 1)[0]}
    for loss, reference, rel in zip(got["losses"], expected, (rel_first, rel_second)):
        assert loss == reference if rel == 0 else loss == pytest.approx(reference, rel=rel)


def test_written_checkpoint_reads_back_equal(ds_runs, resumed):
    _, _, converted = resumed["z3-bf16-ws2", str({"world_size": 1, "stage": 2})]
    source, back = ckpt_core.load(ds_runs["z3-bf16-ws2"]), ckpt_core.load(converted)
    assert differences(source.evolve(train_state=None), back.evolve(train_state=None)) == []
    a, b = source.train_state.optimizer, back.train_state.optimizer
    assert a.groups == b.groups and a.param_state.keys() == b.param_state.keys()
    assert all(torch.equal(torchfile.to_torch(a.param_state[n][k]), torchfile.to_torch(b.param_state[n][k]))
               for n in a.param_state for k in ("exp_avg", "exp_avg_sq", "step"))
    assert (back.train_state.extra["world_size"], back.train_state.extra["zero_stage"]) == (1, 2)


def test_writing_without_adam_state_is_refused(ds_runs, tmp_path):
    ck = ckpt_core.load(ds_runs["z2-fp32-ws2"])
    with pytest.raises(ckpt_core.UsageError, match="needs the optimizer state.*--option optimizer=fresh"):
        ckpt_core.save(ck.evolve(train_state=ck.train_state.__class__(step=2)), tmp_path / "out", "deepspeed")
    with pytest.raises(ckpt_core.UsageError, match="stages are 1, 2 and 3"):
        ckpt_core.save(ck, tmp_path / "out", "deepspeed", {"stage": 4})
    with pytest.raises(ckpt_core.UsageError, match="universal='yes': true or false"):
        ckpt_core.save(ck, tmp_path / "out", "deepspeed", {"universal": "yes"})
    with pytest.raises(ckpt_core.UsageError, match="has an optimizer state, which a fresh one would drop"):
        ckpt_core.save(ck, tmp_path / "out", "deepspeed", {"optimizer": "fresh"})
    assert not (tmp_path / "out").exists()


def test_written_zero3_reads_in_zero_to_fp32(ds_runs, resumed):
    """DeepSpeed's own zero_to_fp32.py rebuilds from the ZeRO-3 files ckpt-core wrote the
    weights the ZeRO-2 source holds, bit for bit."""
    _, _, converted = resumed["z2-fp32-ws2", str({"stage": 3})]
    source, reference = ckpt_core.load(ds_runs["z2-fp32-ws2"]), zero_to_fp32(converted)
    assert sorted(reference) == sorted(source.names())
    assert all(torch.equal(reference[n], torchfile.to_torch(source.tensor(n))) for n in reference)
    assert [p.name for p in sorted((converted / "global_step2").iterdir())] == [
        f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in ("model", "optim")]
