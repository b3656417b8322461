"""What a moshi checkpoint cannot hold is refused before anything is written, with the
option that allows it; a wrong option value is a usage error."""

from __future__ import annotations

import attrs
import pytest

import ckpt_core
from ckpt_core import Adapter, LossyConversion, Tensor, TrainState, UsageError


@pytest.fixture
def full(full_run):
    return ckpt_core.load(full_run)


def _refused(ck, dst, error, match, **options):
    with pytest.raises(error, match=match):
        ckpt_core.save(ck, dst, "moshi", options)
    assert not dst.exists() and not [p for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}")]


def test_a_tie_moshi_has_no_place_for_is_refused(full, tmp_path):
    tensors = dict(full.tensors)
    del tensors["text_linear.weight"]
    ck = full.evolve(tensors=tensors, ties={**full.ties, "text_linear.weight": "emb.0.weight"})
    _refused(ck, tmp_path / "out", LossyConversion, "text_linear.weight -> emb.0.weight")


def test_a_ttt_second_name_stored_apart_is_refused(full, tmp_path):
    """Reading ties a TTT layer's ``ttt.original_layer.X`` to ``X`` without reading data, so
    one stored apart with other bytes has no place: refused, not lost."""
    alias, target = next(iter(full.ties.items()))
    t = full.tensors[target]
    other = Tensor.from_bytes(bytes(b ^ 1 for b in t.tobytes()), t.dtype, t.shape)
    ties = {a: x for a, x in full.ties.items() if a != alias}
    _refused(full.evolve(tensors={**full.tensors, alias: other}, ties=ties), tmp_path / "out", LossyConversion,
             "stores it apart with other contents")


def test_adapters_moshi_cannot_express_are_refused(full, tmp_path):
    def adapter(rank, alpha, kind="linear"):
        return Adapter(Tensor.from_bytes(bytes(2 * rank * 64), "BF16", (rank, 64)),
                       Tensor.from_bytes(bytes(2 * 100 * rank), "BF16", (100, rank)), alpha, "alpha", kind)

    two_ranks = {"text_linear.weight": adapter(2, 2.0), "transformer.layers.0.self_attn.out_projs.0.weight":
                 Adapter(Tensor.from_bytes(bytes(2 * 4 * 64), "BF16", (4, 64)), Tensor.from_bytes(bytes(2 * 64 * 4), "BF16", (64, 4)), 2.0, "alpha")}
    _refused(full.evolve(adapters=two_ranks), tmp_path / "out", LossyConversion, "one lora_rank and one lora_scaling")
    _refused(full.evolve(adapters={"text_linear.weight": adapter(2, 2.0, "embedding")}), tmp_path / "out",
             LossyConversion, "linear layers only")


def test_training_state_moshi_cannot_keep_is_refused(full, tmp_path):
    ts = full.train_state
    _refused(full.evolve(train_state=attrs.evolve(ts, epoch=3)), tmp_path / "out", LossyConversion, "epoch")
    _refused(full, tmp_path / "consolidated", LossyConversion, "args.yaml belongs in a run directory")
    no_args = attrs.evolve(ts, optimizer=None, config={"training_config": ts.config["training_config"]})
    _refused(full.evolve(train_state=no_args), tmp_path / "consolidated", LossyConversion, "cannot record step 300")
    _refused(full.evolve(train_state=TrainState(step=300)), tmp_path / "checkpoint_000200", UsageError, "names step 200")
    ckpt_core.save(full, tmp_path / "weights", "moshi", {"init_state": "true"})  # asked: weights only
    assert ckpt_core.train_state(tmp_path / "weights") is None


def test_optimizer_state_keyed_by_names_is_refused(full, tmp_path):
    """optimizer_state.pt numbers parameters by position; state keyed by parameter names
    (as nanoGPT's or canonical's) would come back under "0", "1", ...: refused."""
    opt = full.train_state.optimizer
    first = next(iter(opt.param_state))
    named = attrs.evolve(opt, param_state={"text_linear.weight" if n == first else n: s for n, s in opt.param_state.items()})
    _refused(full.evolve(train_state=attrs.evolve(full.train_state, optimizer=named)), tmp_path / "out",
             LossyConversion, "parameter names \\('text_linear.weight'")


def test_unknown_option_values_are_usage_errors(full, tmp_path):
    for option, value in (("layout", "flat"), ("weights", "half"), ("naming", "old")):
        _refused(full, tmp_path / "out", UsageError, f"{option}={value!r}", **{option: value})
