"""Holdout realism across plugins: files written by the upstream libraries themselves
(transformers, mlx, peft), sent through other plugins' formats and back, then loaded by the
same library: identical outputs, bit for bit.

Each plugin's own tests already load its upstream fixtures back (transformers teachers in
swiftkv, peft adapters in lora, mlx modules in mlx, moshi's LMModel in moshi_ttt); these
chains cross plugin boundaries, where one plugin's layout facts meet another's writer.
"""

from __future__ import annotations

import pytest

import ckpt_core
from ckpt_core.compare import differences

torch = pytest.importorskip("torch")


def convert_chain(src, formats, root, **kwargs):
    """Convert ``src`` through each format in turn (``kwargs`` go to every ``convert``);
    return the last destination."""
    names = {"mlx": "run", "canonical": "canon", "safetensors": "st", "hf": "hf", "lora-nanogpt": "ckpt.pt", "peft": "adapter"}
    path = src
    for i, fmt in enumerate(formats):
        dst = root / f"{i}-{names[fmt]}"
        ckpt_core.convert(path, dst, fmt, **kwargs)
        path = dst
    return path


# -- transformers ---------------------------------------------------------------------------


def hf_model(kind: str, **overrides):
    """A tiny transformers causal LM with random weights (not the init's zeros and ones)."""
    transformers = pytest.importorskip("transformers")
    configs = {"llama": transformers.LlamaConfig, "qwen3": transformers.Qwen3Config}
    config = configs[kind](vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, **overrides)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def hf_logits(directory, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory).eval()(ids).logits


@pytest.mark.parametrize("kind, overrides, chain", [
    ("llama", {}, ["canonical", "hf"]),
    ("llama", {}, ["mlx", "canonical", "safetensors", "hf"]),
    ("qwen3", {"tie_word_embeddings": True}, ["canonical", "mlx", "canonical", "hf"]),
], ids=["llama-sharded-via-canonical", "llama-via-mlx-canonical-safetensors", "qwen3-tied-via-canonical-mlx"])
def test_transformers_model_survives_other_plugins_formats(tmp_path, kind, overrides, chain):
    """Through canonical nothing is lost. mlx and safetensors cannot keep config.json (the
    ``hf`` extra): that is refused by name, and allowed, the hf writer rebuilds a config
    from the shapes whose defaults are those of these models, so outputs stay identical."""
    model = hf_model(kind, **overrides)
    src = tmp_path / "src"
    model.save_pretrained(src, max_shard_size="20KB")
    lossless = chain == ["canonical", "hf"]
    if not lossless:
        with pytest.raises(ckpt_core.LossyConversion, match="format-specific fields of hf .allow with --allow-loss extra"):
            ckpt_core.convert(src, tmp_path / "refused", chain[0] if chain[0] != "canonical" else chain[1])
        assert not (tmp_path / "refused").exists()
    out = convert_chain(src, chain, tmp_path, allow_loss=() if lossless else ("extra",))
    before, after = ckpt_core.load(src), ckpt_core.load(out)
    if lossless:
        assert differences(before, after) == []
    else:
        assert differences(before.evolve(extra={}), after.evolve(extra={})) == []
    ids = torch.tensor([[1, 5, 9, 2, 33, 60, 7]])
    with torch.no_grad():
        expected = model(ids).logits
    assert torch.equal(hf_logits(out, ids), expected)
    if overrides.get("tie_word_embeddings"):
        assert "lm_head.weight" in ckpt_core.load(out).ties


# -- mlx ------------------------------------------------------------------------------------


def test_mlx_module_survives_canonical_and_safetensors(tmp_path):
    mx = pytest.importorskip("mlx.core")
    import mlx.optimizers as optim
    from mlx import nn
    from mlx.utils import tree_flatten

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(16, 8)
            self.blocks = [nn.Linear(8, 8), nn.Linear(8, 8, bias=False)]
            self.norm = nn.RMSNorm(8)
            self.head = nn.Linear(8, 16)

        def __call__(self, x):
            h = self.embed(x)
            for block in self.blocks:
                h = nn.gelu(block(h))
            return self.head(self.norm(h))

    mx.random.seed(0)
    model, opt = Tiny(), optim.AdamW(learning_rate=1e-2)
    x = mx.array([[1, 2, 3, 4]])

    def loss(m):
        return nn.losses.cross_entropy(m(x), mx.array([[2, 3, 4, 5]])).mean()

    step = nn.value_and_grad(model, loss)
    for _ in range(2):
        _, grads = step(model)
        opt.update(model, grads)
    model.set_dtype(mx.bfloat16)
    mx.eval(model.parameters())
    src = tmp_path / "step_000002.safetensors"
    model.save_weights(str(src))

    out = convert_chain(src, ["canonical", "safetensors", "mlx"], tmp_path)
    (written,) = out.glob("step_*.safetensors")
    fresh = Tiny()
    fresh.load_weights(str(written), strict=True)
    for (k, a), (k2, b) in zip(tree_flatten(model.parameters()), tree_flatten(fresh.parameters())):
        assert k == k2 and a.dtype == b.dtype == mx.bfloat16 and mx.array_equal(a, b).item(), k
    assert mx.array_equal(model(x), fresh(x)).item()


# -- peft -----------------------------------------------------------------------------------


def test_peft_adapters_survive_the_fork_and_canonical(tmp_path):
    """The adapters come back exact; the fork computes exact GELU where HF GPT-2 computes
    gelu_new, which the conversion into the fork says in a warning. The base's HF files
    (config fields, generation_config.json) have no place in the fork's file: a declared loss."""
    pytest.importorskip("peft")
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=48, n_positions=16, n_embd=32, n_layer=2, n_head=2, bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "base")
    base = GPT2LMHeadModel.from_pretrained(tmp_path / "base")
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False)
    model = get_peft_model(base, lora).eval()
    model.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(tmp_path / "adapter")

    with pytest.warns(ckpt_core.CkptWarning, match="activation_function='gelu_new'"):
        mid = convert_chain(tmp_path / "adapter", ["canonical", "lora-nanogpt", "canonical"], tmp_path,
                            allow_loss=["extra"])
    out = tmp_path / "out"
    ckpt_core.convert(mid, out, "peft", {"base": str(tmp_path / "base")})
    assert differences(ckpt_core.load(tmp_path / "adapter").evolve(extra={}), ckpt_core.load(out).evolve(extra={})) == []
    ids = torch.randint(0, 48, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(ids).logits
        got = PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(tmp_path / "base"), out).eval()(ids).logits
    assert torch.equal(got, expected)
