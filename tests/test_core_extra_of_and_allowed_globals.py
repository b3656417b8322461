"""Two small core additions: ``FormatSpec.extra_of`` (a format keeps the extra fields of
sibling formats of its plugin) and ``torchfile.load_pickle(allowed_globals=...)`` (a format
allows exactly the globals its pickles need, and every other one is still refused by name)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ckpt_core import Checkpoint, FormatSpec, LossyConversion, UnsafeInput, losses

torch = pytest.importorskip("torch")

from ckpt_core import torchfile  # noqa: E402


def _spec(**kw) -> FormatSpec:
    return FormatSpec(name="teacher", description="a test format", **kw)


def test_extra_of_a_sibling_format_is_not_a_loss():
    ck = Checkpoint(extra={"student": {"files": {"tokenizer.json": b"{}"}}, "other": {"x": 1}})
    plain = losses.find(ck, _spec())
    assert [loss.kind for loss in plain] == ["extra"] and "student, other" in plain[0].detail
    sibling = losses.find(ck, _spec(extra_of={"student"}))
    assert [loss.kind for loss in sibling] == ["extra"] and "student" not in sibling[0].detail
    assert losses.find(ck.evolve(extra={"student": {}}), _spec(extra_of={"student"})) == []
    with pytest.raises(LossyConversion):
        losses.apply_allowed(ck, _spec(extra_of={"student"}), [])
    kept = losses.apply_allowed(ck, _spec(extra_of={"student"}), ["extra"])
    assert kept.extra == {"student": {"files": {"tokenizer.json": b"{}"}}}


def test_allowed_globals_load_rng_states_and_nothing_else(tmp_path):
    np.random.seed(0)
    state = np.random.get_state()
    path = tmp_path / "states.pt"
    torch.save({"np_random_state": state, "step": 3}, path)
    with pytest.raises(UnsafeInput, match="numpy"):
        torchfile.load_pickle(path)
    core = np._core.multiarray
    allowed = [(core._reconstruct, "numpy._core.multiarray._reconstruct"), np.ndarray, np.dtype]
    with pytest.raises(UnsafeInput, match=r"needs numpy\.dtypes\.UInt32DType\)"):  # the dtype's class is built too
        torchfile.load_pickle(path, allowed_globals=allowed)
    allowed.append(type(np.dtype(np.uint32)))
    loaded = torchfile.load_pickle(path, allowed_globals=allowed)
    assert loaded["step"] == 3 and np.array_equal(loaded["np_random_state"][1], state[1])
    torch.save({"np_random_state": state, "trap": random.Random(0)}, path)
    with pytest.raises(UnsafeInput) as caught:
        torchfile.load_pickle(path, allowed_globals=allowed)
    message = str(caught.value)
    assert "random.Random" in message and "numpy.ndarray" not in message and "_reconstruct" not in message
