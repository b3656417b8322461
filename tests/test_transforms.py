"""The steps that compute (merging adapters, casting) and the loss check before a write."""

from __future__ import annotations

import math

import attrs
import numpy as np
import pytest

from ckpt_core import dtypes, losses, transforms
from ckpt_core.errors import LossyConversion, UsageError
from ckpt_core.model import CAPABILITIES, Adapter, Arch, Checkpoint, FormatSpec, OptimizerState, TrainState
from ckpt_core.tensor import Tensor


def bf16_by_hand(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 words, nearest with ties to even, decided by comparing distances in
    float64 (an implementation independent of the bit trick in dtypes)."""
    out = []
    for x in np.asarray(values, np.float32).ravel():
        bits = int(np.array([x], np.float32).view(np.uint32)[0])
        lo = bits >> 16  # toward zero
        hi = lo + 1  # away from zero
        v_lo = float(np.array([lo << 16], np.uint32).view(np.float32)[0])
        v_hi = float(np.array([(hi << 16) & 0xFFFFFFFF], np.uint32).view(np.float32)[0])
        d_lo, d_hi = abs(float(x) - v_lo), abs(v_hi - float(x))
        out.append(lo if d_lo < d_hi or (d_lo == d_hi and lo % 2 == 0) else hi)
    return np.array(out, np.uint16).reshape(np.shape(values))


def test_bf16_by_hand_agrees_with_known_words():
    words = bf16_by_hand(np.array([1.0, 1.00390625, 1.01171875, -3.0, 0.1], np.float32))
    # 1 + 2^-8 is halfway between 1 and 1 + 2^-7 -> even (1.0); 1 + 3*2^-8 -> up to 1 + 2^-6
    np.testing.assert_array_equal(words, [0x3F80, 0x3F80, 0x3F82, 0xC040, 0x3DCD])


def bf16_tensor(values) -> Tensor:
    return Tensor.from_numpy(bf16_by_hand(np.asarray(values, np.float32)), "BF16")


def f32(t: Tensor) -> np.ndarray:
    return dtypes.to_float32(t.raw(), t.dtype)


RNG = np.random.default_rng(0)


def lora(out_dim: int, in_dim: int, rank: int, dtype: str = "BF16", alpha: float = 8.0, **kw) -> Adapter:
    a = RNG.standard_normal((rank, in_dim)).astype(np.float32)
    b = RNG.standard_normal((out_dim, rank)).astype(np.float32) * 0.1
    make = bf16_tensor if dtype == "BF16" else (lambda v: Tensor.from_numpy(v.astype(dtypes.get(dtype).numpy)))
    return Adapter(make(a), make(b), alpha, **kw)


# -- merging --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["BF16", "F16", "F32"])
@pytest.mark.parametrize("adapter_dtype", ["BF16", "F32"])
def test_merge_computes_in_float32_and_rounds_back(dtype, adapter_dtype):
    w32 = RNG.standard_normal((12, 7)).astype(np.float32)
    weight = bf16_tensor(w32) if dtype == "BF16" else Tensor.from_numpy(w32.astype(dtypes.get(dtype).numpy))
    adapter = lora(12, 7, 3, adapter_dtype, alpha=6.0)
    other = Tensor.from_numpy(np.arange(4, dtype=np.int64))
    ck = Checkpoint(tensors={"w": weight, "steps": other}, adapters={"w": adapter})
    merged = transforms.merge_adapters(ck)
    assert merged.adapters == {}
    assert merged.tensors["steps"] is other
    out = merged.tensors["w"]
    assert out.dtype == dtype and out.shape == (12, 7) and out.file_range is None
    total = f32(weight) + np.float32(adapter.scale) * (f32(adapter.b) @ f32(adapter.a))
    assert total.dtype == np.float32
    if dtype == "BF16":
        np.testing.assert_array_equal(out.raw(), bf16_by_hand(total))
    elif dtype == "F16":
        np.testing.assert_array_equal(out.raw(), total.astype(np.float16).view(np.uint16))
    else:
        np.testing.assert_array_equal(out.numpy(), total)
    assert not np.array_equal(out.raw(), weight.raw()), "the delta must change something"


def test_merge_is_lazy():
    calls = []

    def load():
        calls.append(1)
        return np.zeros((4, 4), np.float32)

    ck = Checkpoint(tensors={"w": Tensor.from_loader("F32", (4, 4), load)}, adapters={"w": lora(4, 4, 2, "F32")})
    merged = transforms.merge_adapters(ck)
    assert not calls
    merged.tensors["w"].raw()
    assert calls


@pytest.mark.parametrize("scaling, scale", [("alpha/rank", 3.0), ("alpha/sqrt(rank)", 6.0), ("alpha", 12.0)])
def test_each_scaling_rule(scaling, scale):
    a = np.array([[1, 0, 2], [0, 1, 0], [1, 1, 1], [0, 0, 1]], np.float32)  # rank 4
    b = np.array([[1, 0, 0, 0], [0, 1, 0, 2]], np.float32)
    adapter = Adapter(Tensor.from_numpy(a), Tensor.from_numpy(b), 12.0, scaling)
    assert adapter.rank == 4 and adapter.scale == scale
    weight = Tensor.from_numpy(np.ones((2, 3), np.float32))
    merged = transforms.merge_adapters(Checkpoint(tensors={"w": weight}, adapters={"w": adapter}))
    np.testing.assert_array_equal(merged.tensors["w"].numpy(), 1 + scale * (b @ a))


def test_scaling_edge_cases():
    empty = Adapter(Tensor.from_bytes(b"", "F32", (0, 3)), Tensor.from_bytes(b"", "F32", (2, 0)), 16.0)
    assert empty.rank == 0 and empty.scale == 0.0
    assert Adapter(empty.a, empty.b, 16.0, "alpha").scale == 16.0
    rs = lora(2, 3, 9, "F32", alpha=6.0, scaling="alpha/sqrt(rank)")
    assert rs.scale == pytest.approx(2.0)
    with pytest.raises(ValueError):
        Adapter(empty.a, empty.b, 1.0, "alpha*rank")
    with pytest.raises(ValueError):
        Adapter(empty.a, empty.b, 1.0, kind="conv")


def test_embedding_adapter_on_a_tied_base_leaves_the_head_unmerged_and_untied():
    wte = bf16_tensor(RNG.standard_normal((10, 4)))
    ck = Checkpoint(tensors={"wte": wte, "ln": Tensor.from_numpy(np.ones(4, np.float32))},
                    ties={"lm_head": "wte"}, adapters={"wte": lora(10, 4, 2, kind="embedding")})
    ck.validate()
    merged = transforms.merge_adapters(ck)
    merged.validate()
    assert merged.ties == {} and merged.adapters == {}
    assert merged.tensors["lm_head"] is wte  # the original bytes, not the merged ones
    assert not np.array_equal(merged.tensors["wte"].raw(), wte.raw())
    assert set(merged.names()) == {"wte", "ln", "lm_head"}
    assert ck.ties == {"lm_head": "wte"} and "lm_head" not in ck.tensors  # the input is untouched


def test_several_aliases_stay_tied_to_the_unmerged_copy():
    wte = bf16_tensor(RNG.standard_normal((6, 4)))
    ck = Checkpoint(tensors={"wte": wte}, ties={"lm_head": "wte", "out": "wte"}, adapters={"wte": lora(6, 4, 2)})
    merged = transforms.merge_adapters(ck)
    merged.validate()
    assert merged.tensors["lm_head"] is wte
    assert merged.ties == {"out": "lm_head"}
    assert merged.tensor("out") is wte


def test_adapter_on_the_alias_merges_the_alias_only():
    wte = bf16_tensor(RNG.standard_normal((6, 4)))
    adapter = lora(6, 4, 2)
    ck = Checkpoint(tensors={"wte": wte}, ties={"lm_head": "wte"}, adapters={"lm_head": adapter})
    merged = transforms.merge_adapters(ck)
    merged.validate()
    assert merged.ties == {}
    assert merged.tensors["wte"] is wte
    total = f32(wte) + np.float32(adapter.scale) * (f32(adapter.b) @ f32(adapter.a))
    np.testing.assert_array_equal(merged.tensors["lm_head"].raw(), bf16_by_hand(total))


@pytest.mark.parametrize("on", ["wte", "lm_head"])
def test_tied_head_tie_keeps_the_tie_and_merges_its_storage(on):
    wte = bf16_tensor(RNG.standard_normal((6, 4)))
    adapter = lora(6, 4, 2)
    ck = Checkpoint(tensors={"wte": wte}, ties={"lm_head": "wte"}, adapters={on: adapter})
    merged = transforms.merge_adapters(ck, tied_head="tie")
    merged.validate()
    assert merged.ties == {"lm_head": "wte"} and merged.adapters == {}
    total = f32(wte) + np.float32(adapter.scale) * (f32(adapter.b) @ f32(adapter.a))
    np.testing.assert_array_equal(merged.tensor("lm_head").raw(), bf16_by_hand(total))
    with pytest.raises(UsageError, match="tied_head must be one of untie, tie"):
        transforms.merge_adapters(ck, tied_head="both")


@pytest.mark.parametrize("dtype", ["F8_E4M3", "I32", "U8", "BOOL"])
def test_merge_into_fp8_or_non_float_is_refused(dtype):
    weight = Tensor.from_bytes(bytes(4 * 3 * dtypes.get(dtype).itemsize), dtype, (4, 3))
    ck = Checkpoint(tensors={"w": weight}, adapters={"w": lora(4, 3, 1, "F32")})
    with pytest.raises(UsageError, match=dtype):
        transforms.merge_adapters(ck)


# -- casting -------------------------------------------------------------------------------------------------


def test_cast_f64_to_f32():
    values = RNG.standard_normal(50) * 1e3
    values[:4] = [np.pi, 1e300, -1e-300, 0.1]
    t64 = Tensor.from_numpy(values)
    ints = Tensor.from_numpy(np.arange(3, dtype=np.int64))
    with np.errstate(over="ignore"):
        f32t = Tensor.from_numpy(values.astype(np.float32))
    ck = Checkpoint(tensors={"a": t64, "i": ints, "f": f32t})
    with np.errstate(over="ignore"):
        out = transforms.cast(ck, {"F64": "F32"})
        got = out.tensors["a"].numpy()
    assert out.tensors["a"].dtype == "F32"
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(got, values.astype(np.float32))
    assert got[1] == np.inf
    assert out.tensors["i"] is ints and out.tensors["f"] is f32t


def test_cast_f32_to_bf16_rounds_to_nearest_even():
    values = RNG.standard_normal((5, 9)).astype(np.float32)
    values[0, :4] = [1.00390625, 1.01171875, -1.00390625, 3.0]  # exact ties
    adapter = lora(5, 9, 2, "F32")
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(values), "b": bf16_tensor(np.ones(3))}, adapters={"w": adapter})
    out = transforms.cast(ck, {"F32": "BF16"})
    assert out.tensors["w"].dtype == "BF16"
    np.testing.assert_array_equal(out.tensors["w"].raw(), bf16_by_hand(values))
    assert out.tensors["b"] is ck.tensors["b"]
    cast_adapter = out.adapters["w"]
    assert cast_adapter.a.dtype == cast_adapter.b.dtype == "BF16"
    np.testing.assert_array_equal(cast_adapter.a.raw(), bf16_by_hand(adapter.a.numpy()))
    assert (cast_adapter.alpha, cast_adapter.scaling, cast_adapter.kind) == (adapter.alpha, adapter.scaling, adapter.kind)


def test_cast_is_not_chained_and_widening_is_exact():
    words = np.arange(0, 1 << 16, 97, dtype=np.uint16)
    words = words[~np.isnan(dtypes.to_float32(words, "BF16"))]
    ck = Checkpoint(tensors={"x": Tensor.from_numpy(np.array([0.1], np.float64)), "y": Tensor.from_numpy(words, "BF16")})
    out = transforms.cast(ck, {"F64": "F32", "F32": "BF16", "BF16": "F32"})
    assert out.tensors["x"].dtype == "F32"  # not on to BF16
    assert out.tensors["y"].dtype == "F32"
    np.testing.assert_array_equal(out.tensors["y"].numpy().view(np.uint32), words.astype(np.uint32) << 16)
    same = transforms.cast(ck, {"F16": "F16"})
    assert same.tensors["x"] is ck.tensors["x"]


@pytest.mark.parametrize("mapping, fragment", [
    ({"F32": "F8_E4M3"}, "F8_E4M3"),
    ({"F32": "F8_E5M2"}, "F8_E5M2"),
    ({"F32": "I32"}, "not a float dtype"),
    ({"I64": "F32"}, "not a float dtype"),
    ({"F32": "BOOL"}, "not a float dtype"),
    ({"F32": "float16"}, "unknown dtype"),
    ({"fp32": "F16"}, "unknown dtype"),
])
def test_cast_refusals_are_usage_errors(mapping, fragment):
    ck = Checkpoint(tensors={"w": Tensor.from_numpy(np.ones(2, np.float32))})
    with pytest.raises(UsageError, match=fragment):
        transforms.cast(ck, mapping)


# -- losses ---------------------------------------------------------------------------------------------------


def full_checkpoint() -> Checkpoint:
    """A checkpoint with one of everything a format might not hold."""
    w = bf16_tensor(np.ones((4, 4)))
    opt = OptimizerState("adamw", {"w": {"exp_avg": Tensor.from_numpy(np.zeros(16, np.float32)), "step": 3}})
    return Checkpoint(
        arch=Arch("gpt", {"n_layer": 1}),
        tensors={"w": w, "emb": bf16_tensor(np.ones((8, 4)))},
        ties={"head": "emb"},
        kv_sharing={1: 0},
        adapters={"w": lora(4, 4, 2)},
        train_state=TrainState(step=7, optimizer=opt, metrics={"loss": 1.5}),
        trainable=("w",),
        extra={"mlx": {"keep": True}, "canonical": {"x": 1}},
    )


def spec(name="target", caps=(), **kw) -> FormatSpec:
    return FormatSpec(name=name, description="a test format", capabilities=frozenset(caps), **kw)


def kinds(found) -> list[str]:
    return [loss.kind for loss in found]


def test_find_with_no_capabilities():
    found = losses.find(full_checkpoint(), spec())
    assert kinds(found) == ["adapters", "train_state", "kv_sharing", "trainable", "extra"]
    by_kind = {loss.kind: loss for loss in found}
    assert by_kind["adapters"].allow == "--merge-adapters" and "1 adapter(s) on w" in str(by_kind["adapters"])
    assert by_kind["train_state"].allow == "--allow-loss train_state" and "step 7" in by_kind["train_state"].detail
    assert "{1: 0}" in by_kind["kv_sharing"].detail
    assert "mlx" in by_kind["extra"].detail and "canonical" in by_kind["extra"].detail
    assert str(by_kind["trainable"]) == "trainable set (1 tensors) (allow with --allow-loss trainable)"


def test_find_with_every_capability_finds_nothing():
    assert losses.find(full_checkpoint(), spec(caps=CAPABILITIES)) == []


@pytest.mark.parametrize("kind", ["adapters", "train_state", "kv_sharing", "trainable", "extra"])
def test_each_capability_alone_is_missed(kind):
    caps = set(CAPABILITIES) - {kind}
    if kind == "train_state":
        caps -= {"optimizer_state"}
    assert kinds(losses.find(full_checkpoint(), spec(caps=caps))) == [kind]


def test_optimizer_state_is_its_own_loss():
    found = losses.find(full_checkpoint(), spec(caps=set(CAPABILITIES) - {"optimizer_state"}))
    assert kinds(found) == ["optimizer_state"]
    assert "adamw, 1 parameters" in found[0].detail and found[0].allow == "--allow-loss optimizer_state"
    no_opt = full_checkpoint().evolve(train_state=TrainState(step=1))
    assert losses.find(no_opt, spec(caps=set(CAPABILITIES) - {"optimizer_state"})) == []


def test_family_and_dtype_losses():
    ck = full_checkpoint()
    found = losses.find(ck, spec(caps=CAPABILITIES, families=("llama", "qwen2")))
    assert kinds(found) == ["family"] and found[0].allow == ""
    assert "cannot hold family 'gpt'" in found[0].detail and "llama, qwen2" in found[0].detail
    assert losses.find(ck, spec(caps=CAPABILITIES, families=("gpt",))) == []
    no_bf16 = spec(caps=CAPABILITIES, dtypes=dtypes.ALL_DTYPES - {"BF16"})
    found = losses.find(ck, no_bf16)
    assert kinds(found) == ["dtype"] and found[0].allow == "--cast BF16=<dtype>"
    # adapter matrices count too
    only_f32_adapter = ck.evolve(adapters={"w": lora(4, 4, 2, "F32")}, tensors={
        "w": Tensor.from_numpy(np.ones((4, 4), np.float32)), "emb": Tensor.from_numpy(np.ones((8, 4), np.float32))})
    found = losses.find(only_f32_adapter, spec(caps=CAPABILITIES, dtypes={"BF16"}))
    assert kinds(found) == ["dtype"] and "F32" in found[0].detail


def test_own_extra_is_not_a_loss():
    ck = full_checkpoint().evolve(extra={"target": {"a": 1}})
    assert "extra" not in kinds(losses.find(ck, spec()))


@pytest.mark.parametrize("allow", ["train_state", "optimizer_state", "kv_sharing", "trainable", "extra"])
def test_apply_allowed_drops_exactly_that(allow):
    ck = full_checkpoint()
    caps = set(CAPABILITIES) - {allow}
    if allow == "train_state":
        caps -= {"optimizer_state"}
    target = spec(caps=caps)
    with pytest.raises(LossyConversion) as info:
        losses.apply_allowed(ck, target, [])
    assert kinds(info.value.losses) == [allow] and "Nothing was written" in str(info.value)
    out = losses.apply_allowed(ck, target, [allow])
    assert losses.find(out, target) == []
    fields = {f.name for f in attrs.fields(Checkpoint)}
    changed = {"optimizer_state": "train_state"}.get(allow, allow)
    for field in fields - {changed}:
        assert getattr(out, field) is getattr(ck, field), field
    if allow == "train_state":
        assert out.train_state is None
    elif allow == "optimizer_state":
        assert out.train_state.optimizer is None
        assert out.train_state.step == 7 and out.train_state.metrics is ck.train_state.metrics
    elif allow == "kv_sharing":
        assert out.kv_sharing == {}
    elif allow == "trainable":
        assert out.trainable is None
    else:
        assert out.extra == {}
    # a format that can hold it keeps it, allowed or not
    keeps = losses.apply_allowed(ck, spec(caps=CAPABILITIES), [allow])
    assert all(getattr(keeps, f) is getattr(ck, f) for f in fields)


def test_extra_of_the_target_format_survives_allow_extra():
    ck = full_checkpoint().evolve(extra={"target": {"a": 1}, "mlx": {"b": 2}})
    out = losses.apply_allowed(ck, spec(caps=set(CAPABILITIES) - {"extra"}), ["extra"])
    assert out.extra == {"target": {"a": 1}}


def test_apply_allowed_refuses_what_is_left():
    ck = full_checkpoint()
    with pytest.raises(LossyConversion) as info:
        losses.apply_allowed(ck, spec(), ["train_state", "kv_sharing"])
    assert kinds(info.value.losses) == ["adapters", "trainable", "extra"]
    assert "--merge-adapters" in str(info.value) and "converting to 'target' would lose" in str(info.value)
    merged = transforms.merge_adapters(ck)
    out = losses.apply_allowed(merged, spec(caps={"ties"}), ["train_state", "kv_sharing", "trainable", "extra"])
    assert out.adapters == {} and out.train_state is None and out.kv_sharing == {} and out.trainable is None


@pytest.mark.parametrize("allow", [["adapters"], ["train_state", "everything"], ["family"], ["dtype"]])
def test_unknown_allow_name_is_a_usage_error(allow):
    with pytest.raises(UsageError, match="--allow-loss takes"):
        losses.apply_allowed(full_checkpoint(), spec(caps=CAPABILITIES), allow)


def test_rank_of_adapter_is_a_rows():
    ad = lora(5, 3, 4, "F32")
    assert ad.rank == 4 and ad.scale == pytest.approx(8.0 / 4)
    assert math.isclose(Adapter(ad.a, ad.b, 8.0, "alpha/sqrt(rank)").scale, 4.0)


def test_hyper_parameters_holding_tensors_cannot_go_to_safetensors(tmp_path):
    import ckpt_core

    ck = Checkpoint(arch=Arch("generic", {"table": Tensor.from_numpy(np.arange(3))}),
                    tensors={"w": Tensor.from_numpy(np.ones(2, np.float32))})
    with pytest.raises(LossyConversion, match="table"):
        ckpt_core.save(ck, tmp_path / "x.safetensors", "safetensors")
    assert list(tmp_path.iterdir()) == []
