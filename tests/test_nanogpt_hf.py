"""nanoGPT <-> Hugging Face GPT-2 (issue 15, item 2), against the real modules: nanoGPT's
``GPT`` (the reference mirror of karpathy's model.py in plugins/nanogpt/tests) and
transformers' ``GPT2LMHeadModel``. Both sides are computed in the same run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ckpt_core
from ckpt_core import LossyConversion
from ckpt_core.compare import differences
from ckpt_core.plugins import registry

sys.path.insert(0, str(Path(__file__).parents[1] / "plugins" / "nanogpt" / "tests"))
import nanogpt_reference as ref  # noqa: E402

pytestmark = pytest.mark.skipif(not {"nanogpt", "hf"} <= set(registry().formats),
                                reason="needs the nanogpt and hf plugins")
ROOT = Path(__file__).parents[1]
CLI = [sys.executable, "-m", "ckpt_core"]
IDS = torch.tensor([[1, 5, 9, 2, 33, 60, 7, 0, 63, 12, 4, 4, 8, 19, 50, 3]])  # a full block of 16 tokens
BIASES = ("ln_1.bias", "attn.c_attn.bias", "attn.c_proj.bias", "ln_2.bias", "mlp.c_fc.bias", "mlp.c_proj.bias")


def _nanogpt_run(directory: Path, bias: bool) -> tuple[ref.NanoGPT, Path]:
    """A nanoGPT model trained two steps with AdamW, saved as train.py saves ``ckpt.pt``."""
    torch.manual_seed(0)
    model = ref.NanoGPT(ref.GPTConfig(bias=bias))
    optimizer = model.configure_optimizers(0.1, 6e-4, (0.9, 0.95))
    ref.train_nanogpt(model, optimizer, range(2))
    directory.mkdir()
    ref.save_nanogpt(model, optimizer, 2, directory / "ckpt.pt")
    return model.eval(), directory / "ckpt.pt"


def _hf_logits(directory: Path) -> torch.Tensor:
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(directory).eval()
    with torch.no_grad():
        return model(IDS).logits


def _run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_nanogpt_exports_to_gpt2_with_equal_logits(tmp_path, bias):
    model, ckpt = _nanogpt_run(tmp_path / "out", bias)
    out = tmp_path / "gpt2-hf"
    done = _run("convert", ckpt, out, "--to", "hf")  # AdamW state and iter_num: a training state hf cannot hold
    assert done.returncode == LossyConversion.exit_code and "--allow-loss train_state" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not out.exists()
    done = _run("convert", ckpt, out, "--to", "hf", "--allow-loss", "train_state")
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["activation_function"] == "gelu" and config["layer_norm_epsilon"] == 1e-5
    assert (config["n_positions"], config["n_ctx"], config["vocab_size"], config["n_embd"], config["n_head"],
            config["n_layer"]) == (16, 16, 64, 32, 2, 2)
    assert config["tie_word_embeddings"] is True and config["architectures"] == ["GPT2LMHeadModel"]
    with torch.no_grad():
        expected = model(IDS)[0]
    got = _hf_logits(out)
    assert got.dtype == torch.float32 and torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()
    from transformers import GPT2LMHeadModel

    state = GPT2LMHeadModel.from_pretrained(out).state_dict()
    for i in range(2):
        for name in BIASES:
            b = state[f"transformer.h.{i}.{name}"]
            assert bool(b.any()) is bias if "ln_" not in name else True, name
            if not bias:
                assert torch.equal(b, torch.zeros_like(b)), name  # exact zeros: they compute what no bias computes
    weight = model.state_dict()["transformer.h.0.attn.c_attn.weight"]
    assert torch.equal(state["transformer.h.0.attn.c_attn.weight"], weight.T)  # Conv1D: [in, out], exactly

    back = tmp_path / "back.pt"
    assert _run("convert", out, back, "--to", "nanogpt").returncode == 0
    first, again = ckpt_core.load(ckpt), ckpt_core.load(back)
    assert list(again.tensors) == list(first.tensors) and again.arch.params == first.arch.params  # (as a mapping)
    assert differences(first.evolve(train_state=None, arch=again.arch), again) == []


def _transformers_gpt2(directory: Path):
    """A GPT-2 made and saved by transformers, configured to compute nanoGPT's function
    (exact GELU: ``activation_function`` "gelu")."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(1)
    config = GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, activation_function="gelu")
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.1, 0.1)  # trained biases: not the zeros a bias=False export adds
    model.save_pretrained(directory)
    return model


def test_transformers_gpt2_imports_into_nanogpt_strictly(tmp_path):
    hf_model = _transformers_gpt2(tmp_path / "gpt2")
    ckpt = tmp_path / "out" / "ckpt.pt"
    ckpt.parent.mkdir()
    done = _run("convert", tmp_path / "gpt2", ckpt, "--to", "nanogpt")
    assert done.returncode == 0, done.stderr
    model, _, saved = ref.load_nanogpt(ckpt)  # train.py's resume: model_args, strict=True
    args = saved["model_args"]
    assert (args["n_layer"], args["n_head"], args["n_embd"], args["block_size"], args["bias"], args["vocab_size"]) == \
        (2, 2, 32, 16, True, 64)
    with torch.no_grad():
        expected = hf_model(IDS).logits
        got = model.eval()(IDS)[0]
    assert torch.allclose(got, expected, rtol=0, atol=1e-5), (got - expected).abs().max()
    again = tmp_path / "again"
    assert _run("convert", ckpt, again, "--to", "hf").returncode == 0
    assert torch.equal(_hf_logits(again), _hf_logits(tmp_path / "gpt2"))


def test_gelu_new_gpt2_keeps_its_activation(tmp_path):
    """A GPT-2 computing ``gelu_new`` (transformers' default) is not nanoGPT's function:
    the activation stays a stated hyper-parameter, and goes back to config.json (which
    gains only ``n_ctx``, older transformers' name of ``n_positions``)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2)).save_pretrained(tmp_path / "a")
    ck = ckpt_core.load(tmp_path / "a")
    assert ck.arch.family == "gpt" and ck.arch.params["activation_function"] == "gelu_new"
    ckpt_core.save(ck, tmp_path / "b", "hf")
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert written.pop("n_ctx") == 16 and written == json.loads((tmp_path / "a" / "config.json").read_text())
    assert torch.equal(_hf_logits(tmp_path / "b"), _hf_logits(tmp_path / "a"))


def test_a_bare_gpt2_model_as_the_hub_keeps_it_reads_as_the_lm(tmp_path):
    """The hub's ``gpt2`` is a ``GPT2Model`` state dict (``wte.weight``, ``h.0...``, no
    head): read under ``transformer.`` with the head tied, it goes into nanoGPT strictly."""
    from transformers import GPT2Model

    lm = _transformers_gpt2(tmp_path / "lm")
    bare = GPT2Model(lm.config)
    bare.load_state_dict(lm.transformer.state_dict())
    bare.save_pretrained(tmp_path / "bare")
    ck = ckpt_core.load(tmp_path / "bare")
    assert ck.ties == {"lm_head.weight": "transformer.wte.weight"} and "transformer.h.0.attn.c_attn.weight" in ck.tensors
    assert differences(ckpt_core.load(tmp_path / "lm").evolve(extra={}), ck.evolve(extra={})) == []


@pytest.mark.skipif(not os.environ.get("CKPT_CORE_FRESH_VENV"), reason="builds a fresh venv from the package index "
                    "(about 60 s): set CKPT_CORE_FRESH_VENV=1")
def test_a_fresh_venv_with_core_nanogpt_and_hf_exports_to_gpt2(tmp_path):
    """pip install ckpt-core ckpt-plugin-nanogpt ckpt-plugin-hf alone (no swiftkv, lora...)
    exports the README's example, and transformers (here) loads it with nanoGPT's logits."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True)
    pip = subprocess.run([venv / "bin" / "pip", "install", "-q", ROOT, ROOT / "plugins" / "nanogpt", ROOT / "plugins" / "hf"],
                         capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr
    listed = subprocess.run([venv / "bin" / "ckpt-core", "plugins", "--json"], capture_output=True, text=True)
    assert {p["name"] for p in json.loads(listed.stdout)["plugins"]} == {"canonical", "safetensors", "gpt", "nanogpt", "hf"}
    model, ckpt = _nanogpt_run(tmp_path / "out", bias=False)
    done = subprocess.run([venv / "bin" / "ckpt-core", "convert", ckpt, tmp_path / "gpt2-hf", "--to", "hf",
                           "--allow-loss", "train_state"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with torch.no_grad():
        assert torch.allclose(_hf_logits(tmp_path / "gpt2-hf"), model(IDS)[0], rtol=0, atol=1e-5)
