"""torchtitan's own Llama names: a DCP checkpoint saved with them (by the real ``dcp.save``)
reads as transformers' Llama, ``wq``/``wk`` and their AdamW moments permuted as torchtitan's
``convert_to_hf`` does, and is written back with them.

torchtitan is not installed here, so its conversion is re-derived in this test from its
documented formula (``Llama3StateDictAdapter``): ``from_hf`` renames by the table below and
undoes the RoPE permutation of each head's rows,
``w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)``. The
torchtitan checkpoint is made from a transformers model that way; ckpt-core must give back
that model's tensors bit for bit, and its logits from transformers.
"""

from __future__ import annotations

import pytest

import ckpt_core
from ckpt_core import torchfile

torch = pytest.importorskip("torch")
dcp = pytest.importorskip("torch.distributed.checkpoint")
transformers = pytest.importorskip("transformers")

CONFIG = dict(vocab_size=97, hidden_size=64, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False)
HEADS = {"n_head": 4, "n_kv_head": 2}
FROM_HF = {  # torchtitan's Llama3StateDictAdapter.from_hf_map, written out here
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


def reverse_permute(w, heads):
    rows, cols = w.shape
    return w.view(heads, 2, rows // heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def titan_name(hf: str) -> str:
    for pattern, titan in FROM_HF.items():
        head, _, tail = pattern.partition("{}")
        if tail and hf.startswith(head) and hf.endswith(tail) and hf[len(head):-len(tail)].isdigit():
            return titan.replace("{}", hf[len(head):-len(tail)])
        if not tail and hf == pattern:
            return titan
    raise AssertionError(hf)


def from_hf(hf: str, value):
    """torchtitan's from_hf for one tensor (weights and their per-element moments alike)."""
    if value.dim() == 2 and ".q_proj." in hf:
        return reverse_permute(value, HEADS["n_head"]).clone()
    if value.dim() == 2 and ".k_proj." in hf:
        return reverse_permute(value, HEADS["n_kv_head"]).clone()
    return value


def same(a, b) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                     b.reshape(-1).view(torch.uint8))


@pytest.fixture(scope="module")
def titan(tmp_path_factory):
    """A transformers Llama after one AdamW step, and the same saved by dcp.save with
    torchtitan's names and layout: (folder, model, its state dict, optimizer state by HF name)."""
    out = tmp_path_factory.mktemp("titan")
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ids = torch.arange(24).reshape(2, 12) * 7 % CONFIG["vocab_size"]
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    state = {names[i]: {k: v.clone() for k, v in s.items()} for i, s in opt.state_dict()["state"].items()}
    group = {k: v for k, v in opt.state_dict()["param_groups"][0].items() if k != "params"}
    saved = {"model": {titan_name(k): from_hf(k, v) for k, v in sd.items()},
             "optim": {"state": {titan_name(k): {slot: from_hf(k, v) for slot, v in s.items()} for k, s in state.items()},
                       "param_groups": [{**group, "params": [titan_name(n) for n in names]}]}}
    dcp.save(saved, checkpoint_id=out / "step-1", no_dist=True)
    return out, model.eval(), sd, state, saved


def loaded(path, like):
    """What torch's own dcp.load gives for ``like``'s keys and shapes."""
    sd = {part: {k: torch.empty_like(v) for k, v in values.items()} for part, values in like.items()}
    dcp.load(sd, checkpoint_id=path, no_dist=True)
    return sd


def test_reads_as_the_transformers_model_with_its_adamw_state(titan):
    out, _, sd, state, _ = titan
    ck = ckpt_core.load(out / "step-1", options={"params": HEADS})
    assert ck.arch.family == "llama" and set(ck.tensors) == set(sd)
    assert all(same(torchfile.to_torch(ck.tensors[k]), v) for k, v in sd.items())
    opt = ck.train_state.optimizer
    assert set(opt.param_state) == set(state)
    for name, slots in state.items():
        assert all(same(torchfile.to_torch(opt.param_state[name][s]), v) for s, v in slots.items()), name
    assert opt.groups[0]["params"] == list(state)


def test_hf_output_gives_the_models_logits(titan, tmp_path):
    out, model, *_ = titan
    ckpt_core.convert(out / "step-1", tmp_path / "hf", "hf", {"params": HEADS}, allow_loss=["train_state"])
    back = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hf").eval()
    ids = torch.arange(30).reshape(2, 15) * 11 % CONFIG["vocab_size"]
    with torch.no_grad():
        assert torch.equal(back(ids).logits, model(ids).logits)


def test_written_back_with_torchtitan_names_at_any_world_size(titan, tmp_path):
    """DCP -> DCP keeps torchtitan's names and bytes (dcp.load gives the saved tensors)."""
    out, *_, saved = titan
    for world in (1, 2):
        ckpt_core.convert(out / "step-1", tmp_path / f"w{world}", "dcp", {"params": HEADS, "world_size": world})
        back = loaded(tmp_path / f"w{world}", {"model": saved["model"]})
        assert all(same(back["model"][k], v) for k, v in saved["model"].items())


def test_hf_to_torchtitan_dcp(titan, tmp_path):
    """An HF model written as DCP with names=torchtitan is what torchtitan's from_hf makes."""
    out, *_, saved = titan
    ckpt_core.convert(out / "step-1", tmp_path / "hf", "hf", {"params": HEADS}, allow_loss=["train_state"])
    ckpt_core.convert(tmp_path / "hf", tmp_path / "init", "dcp", {"names": "torchtitan", "world_size": 2},
                      allow_loss=["extra"])
    back = loaded(tmp_path / "init", {"model": saved["model"]})
    assert all(same(back["model"][k], v) for k, v in saved["model"].items())


def test_without_head_counts_the_names_are_kept(titan):
    out, *_, saved = titan
    ck = ckpt_core.load(out / "step-1")
    assert set(ck.tensors) == set(saved["model"]) and ck.arch.family != "llama"
    assert all(same(torchfile.to_torch(ck.tensors[k]), v) for k, v in saved["model"].items())


@pytest.mark.parametrize("options, says", [({"names": "titan"}, "--option names"),
                                           ({"names": "torchtitan"}, "head counts")])
def test_bad_names_option_is_a_usage_error(titan, tmp_path, options, says):
    out, *_ = titan
    ckpt_core.convert(out / "step-1", tmp_path / "hf", "hf", {"params": HEADS}, allow_loss=["train_state"])
    src = ckpt_core.load(tmp_path / "hf")
    ck = src.evolve(arch=src.arch.__class__(src.arch.family, {}))
    with pytest.raises(ckpt_core.UsageError, match=says):
        ckpt_core.save(ck, tmp_path / "out", "dcp", options)
    assert not (tmp_path / "out").exists()
