"""mlx-lm LoRA adapter directories (issue 15 item 4): peft -> mlx-lm adapters -> peft with
no base model, exact; mlx-lm applies what is written (its own LoRA layers) and computes what
peft computes on the same base; adapters mlx-lm itself saved go to peft the same way."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import ckpt_core
from ckpt_core import CorruptInput, LossyConversion, NotFound
from ckpt_core.testing import FormatConformance

peft = pytest.importorskip("peft")
import torch  # noqa: E402
import transformers  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TOKENS = [[1, 5, 9, 3, 7, 2, 60, 11]]


def make_peft(root: Path, base: Path, **lora) -> Path:
    """peft adapters saved by peft on the tiny HF Llama at ``base`` (random A and B), naming a
    hub id as their base, as a downloaded adapter does: ckpt-core cannot find the base."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    config = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": TARGETS, "init_lora_weights": False, **lora})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = get_peft_model(model, config)
        wrapped.peft_config["default"].base_model_name_or_path = "example/tiny-llama"
        wrapped.save_pretrained(root)
    return root


def peft_logits(base: Path, adapter: Path) -> np.ndarray:
    from peft import PeftModel

    model = PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    with torch.no_grad():
        return model(torch.tensor(TOKENS)).logits.numpy()


def mlx_logits(base: Path, adapters: Path | None) -> np.ndarray:
    """The logits of mlx-lm's own model loaded from ``base``, with its LoRA layers from ``adapters``."""
    import mlx.core as mx
    from mlx_lm.tuner.utils import load_adapters
    from mlx_lm.utils import load_model

    model, _ = load_model(base)
    if adapters is not None:
        load_adapters(model, str(adapters))
    return np.array(model(mx.array(TOKENS)).astype(mx.float32))


def safetensors(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(path)


def config_meaning(adapter: Path) -> dict:
    config = json.loads((adapter / "adapter_config.json").read_text())
    return {k: sorted(v) if k == "target_modules" else v
            for k, v in config.items() if k in ("r", "lora_alpha", "target_modules", "use_rslora", "rank_pattern",
                                                  "alpha_pattern", "fan_in_fan_out", "peft_type")}


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    """A tiny float32 HF Llama saved by transformers (mlx-lm loads HF directories)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    path = tmp_path_factory.mktemp("base") / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def adapter(tmp_path_factory, base) -> Path:
    return make_peft(tmp_path_factory.mktemp("peft") / "adapter", base)


def test_peft_to_mlx_lm_adapters_and_back_without_base(adapter, tmp_path):
    ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm")
    assert sorted(p.name for p in (tmp_path / "mlx").iterdir()) == ["adapter_config.json", "adapters.safetensors"]
    config = json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == "lora" and config["num_layers"] == -1
    lora = config["lora_parameters"]
    assert (lora["rank"], lora["scale"], lora["dropout"]) == (4, 2.0, 0.0)  # scale: alpha / r as a plain multiplier
    assert lora["keys"] == ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj", "self_attn.o_proj",
                            "self_attn.q_proj", "self_attn.v_proj"]
    written, source = safetensors(tmp_path / "mlx" / "adapters.safetensors"), safetensors(adapter / "adapter_model.safetensors")
    key = "base_model.model.model.layers.1.mlp.down_proj.lora_{}.weight"
    assert np.array_equal(written["model.layers.1.mlp.down_proj.lora_a"], source[key.format("A")].T)  # [in, r]
    assert np.array_equal(written["model.layers.1.mlp.down_proj.lora_b"], source[key.format("B")].T)  # [r, out]
    assert len(written) == len(source)

    ckpt_core.convert(tmp_path / "mlx", tmp_path / "back", "peft")
    back = safetensors(tmp_path / "back" / "adapter_model.safetensors")
    assert sorted(back) == sorted(source) and all(np.array_equal(back[k], source[k]) for k in source)
    assert not (tmp_path / "back" / "base_model").exists()
    assert config_meaning(tmp_path / "back") == config_meaning(adapter)


def test_mlx_lm_computes_what_peft_computes(adapter, base, tmp_path):
    ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm")
    expected = peft_logits(base, adapter)
    got = mlx_logits(base, tmp_path / "mlx")
    assert np.abs(got - expected).max() < 1e-4
    assert np.abs(mlx_logits(base, None) - expected).max() > 1e-2  # the adapters count


def test_rslora_scale(base, tmp_path):
    adapter = make_peft(tmp_path / "adapter", base, use_rslora=True, lora_alpha=6)
    ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm")
    assert json.loads((tmp_path / "mlx" / "adapter_config.json").read_text())["lora_parameters"]["scale"] == 3.0
    assert np.abs(mlx_logits(base, tmp_path / "mlx") - peft_logits(base, adapter)).max() < 1e-4
    ckpt_core.convert(tmp_path / "mlx", tmp_path / "back", "peft")
    assert config_meaning(tmp_path / "back") == config_meaning(adapter)


def mlx_lm_adapters(base: Path, root: Path, num_layers: int, keys: list[str]) -> Path:
    """Adapters as ``mlx_lm.lora`` saves them: its LoRA layers on the model (random
    ``lora_b``, as after training), the trainable parameters and the run's config."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    mx.random.seed(3)
    model, _ = load_model(base)
    model.freeze()
    lora = {"rank": 3, "scale": 12.5, "dropout": 0.0, "keys": keys}
    linear_to_lora_layers(model, num_layers, lora)
    params = dict(tree_flatten(model.trainable_parameters()))
    params = {k: mx.random.normal(v.shape) * 0.1 if k.endswith("lora_b") else v for k, v in params.items()}
    root.mkdir()
    mx.save_safetensors(str(root / "adapters.safetensors"), params, {"format": "mlx"})
    config = {"model": str(base), "fine_tune_type": "lora", "num_layers": num_layers, "lora_parameters": lora,
              "iters": 10, "learning_rate": 1e-5, "seed": 0}
    (root / "adapter_config.json").write_text(json.dumps(config, indent=4))
    return root


def test_mlx_lm_adapters_to_peft_compute_the_same(base, tmp_path):
    """Adapters mlx-lm made (the last block only) -> peft: peft computes what mlx-lm does;
    -> mlx-lm again: the same files' tensors and config."""
    made = mlx_lm_adapters(base, tmp_path / "mlx", 1, ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"])
    assert ckpt_core.detect(made)[0].format == "mlx-lm"
    ckpt_core.convert(made, tmp_path / "peft", "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"]) == (3, 37.5, False)  # peft: scale = alpha / r
    assert {k for k in safetensors(tmp_path / "peft" / "adapter_model.safetensors")} == {
        f"base_model.model.model.layers.1.{m}.lora_{p}.weight"
        for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj") for p in "AB"}
    ck = ckpt_core.load(tmp_path / "peft")  # mlx-lm's plain scale, as the metadata keeps it
    assert {a.scale for a in ck.adapters.values()} == {12.5}
    assert np.abs(peft_logits(base, tmp_path / "peft") - mlx_logits(base, made)).max() < 1e-4
    ckpt_core.convert(tmp_path / "peft", tmp_path / "again", "mlx-lm")
    again, first = safetensors(tmp_path / "again" / "adapters.safetensors"), safetensors(made / "adapters.safetensors")
    assert sorted(again) == sorted(first) and all(np.array_equal(again[k], first[k]) for k in first)
    assert json.loads((tmp_path / "again" / "adapter_config.json").read_text()) == json.loads((made / "adapter_config.json").read_text())


def test_adapters_alone_refuse_full_weights_and_merging(adapter, tmp_path):
    """Without the base: writing a model directory or merging is refused in one line, exit 13,
    nothing written; with base=PATH the merge works."""
    ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm")
    for extra in (["--to", "safetensors"], ["--to", "mlx-lm", "--merge-adapters"]):
        out = tmp_path / "out"
        done = subprocess.run([sys.executable, "-m", "ckpt_core", "convert", str(tmp_path / "mlx"), str(out), *extra],
                              capture_output=True, text=True)
        assert done.returncode == 13, done.stderr
        assert done.stderr.count("\n") == 1 and "--option base=PATH" in done.stderr and "Traceback" not in done.stderr
        assert not out.exists()


def test_different_ranks_are_refused(base, tmp_path):
    adapter = make_peft(tmp_path / "adapter", base, rank_pattern={"q_proj": 2})
    with pytest.raises(LossyConversion, match="ranks 2/4"):
        ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm")
    assert not (tmp_path / "mlx").exists()


def test_weights_with_adapters_are_refused(adapter, base, tmp_path):
    """A model with adapters is a model directory (merged) or adapters alone, not both."""
    with pytest.raises(LossyConversion, match="--merge-adapters"):
        ckpt_core.convert(adapter, tmp_path / "mlx", "mlx-lm", {"base": str(base)})


def _dora(directory: Path) -> Path:
    made = _example(directory)
    config = json.loads((made / "adapter_config.json").read_text())
    (made / "adapter_config.json").write_text(json.dumps({**config, "fine_tune_type": "dora"}))
    return made


def _lora_a_alone(directory: Path) -> Path:
    from safetensors.numpy import save_file

    made = _example(directory)
    weights = safetensors(made / "adapters.safetensors")
    save_file({k: v for k, v in weights.items() if not k.endswith("lora_b")}, made / "adapters.safetensors")
    return made


def _no_scale(directory: Path) -> Path:
    made = _example(directory)
    config = json.loads((made / "adapter_config.json").read_text())
    del config["lora_parameters"]["scale"]
    config["lora_parameters"]["alpha"] = 16
    (made / "adapter_config.json").write_text(json.dumps(config))
    return made


def _no_weights(directory: Path) -> Path:
    made = _example(directory)
    (made / "adapters.safetensors").unlink()
    return made


def _example(directory: Path) -> Path:
    """An mlx-lm adapters directory written by ckpt-core from adapters alone."""
    from ckpt_core import Adapter, Checkpoint, Tensor

    rng = np.random.default_rng(0)
    names = [f"model.layers.{i}.self_attn.{m}.weight" for i in range(2) for m in ("q_proj", "v_proj")]
    adapters = {n: Adapter(Tensor.from_numpy(rng.standard_normal((2, 8)).astype(np.float32)),
                           Tensor.from_numpy(rng.standard_normal((8, 2)).astype(np.float32)), 20.0, "alpha")
                for n in names}
    ck = Checkpoint(tensors={n: Tensor.absent("BF16", (8, 8)) for n in names}, adapters=adapters)
    ckpt_core.save(ck, directory / "adapters", "mlx-lm")
    return directory / "adapters"


class TestMlxLmAdaptersConformance(FormatConformance):
    """The shared suite on an adapters directory of the ``mlx-lm`` format; the property
    test draws adapters alone with one rank and one scale, what such a directory holds."""

    format = "mlx-lm"
    bad_inputs = [
        ("DoRA adapters", _dora, CorruptInput),
        ("lora_a without lora_b", _lora_a_alone, CorruptInput),
        ("lora_parameters with alpha, not scale", _no_scale, CorruptInput),
        ("no adapters.safetensors", _no_weights, NotFound),
    ]

    def make_example(self, tmp_path: Path) -> Path:
        return _example(tmp_path)

    def checkpoint_strategy(self):
        from ckpt_core.plugins import registry
        from ckpt_core.testing import checkpoints_for

        drawn = checkpoints_for(registry().spec(self.format), "generic", adapters=True, adapters_alone=True)
        return drawn.map(_one_rank_and_scale)


def _one_rank_and_scale(ck):
    """``ck``'s adapters of its first adapter's rank, with its scale, on ``.weight`` names."""
    from ckpt_core import Adapter

    first = next(iter(ck.adapters.values()))
    kept = {n: Adapter(ad.a, ad.b, first.alpha, first.scaling, ad.kind) for n, ad in ck.adapters.items() if ad.rank == first.rank}
    return ck.evolve(tensors={n + ".weight": ck.tensors[n] for n in ck.tensors if n in kept},
                     adapters={n + ".weight": ad for n, ad in kept.items()})
