"""Non-weight files travel (issue 15, item 7): a directory's tokenizer files, generation
config, chat template and README go hf -> canonical -> hf byte for byte, and the converted
directory is usable as it is (transformers loads its tokenizer and model). Formats with no
place for them refuse, naming the loss and its flag, and drop them only when allowed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from hf_reference import make_model

import ckpt_core
from ckpt_core import LossyConversion

CLI = [sys.executable, "-m", "ckpt_core"]
README = "# tiny-llama\n\nA model card: ckpt-core carries it unread.\n"
TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


def _tokenizer():
    """A real fast tokenizer built here (no network): word-level over 64 tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, 64)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import GenerationConfig

    directory = tmp_path_factory.mktemp("files") / "tiny-llama"
    model = make_model("llama", num_hidden_layers=2)
    model.save_pretrained(directory)
    _tokenizer().save_pretrained(directory)
    GenerationConfig(bos_token_id=1, eos_token_id=2, max_new_tokens=7, do_sample=False).save_pretrained(directory)
    (directory / "README.md").write_text(README)
    return directory


def _files(directory):
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name != "config.json" and "safetensors" not in p.name}


def test_tokenizer_and_generation_files_go_through_canonical_byte_for_byte(tmp_path, model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _files(model_dir)
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja", "README.md"} <= \
        set(source), sorted(source)
    canonical, out = tmp_path / "canonical", tmp_path / "out"
    ckpt_core.convert(model_dir, canonical, "canonical")
    ckpt_core.convert(canonical, out, "hf")
    assert _files(out) == source
    text = "w3 w7 w9 w60"
    tokenizer, original = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer(text)["input_ids"] == original(text)["input_ids"] == [3, 7, 9, 60]
    chat = [{"role": "user", "content": "w5"}]
    assert tokenizer.apply_chat_template(chat, tokenize=False) == "<user>w5"
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.generation_config.max_new_tokens == 7
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, AutoModelForCausalLM.from_pretrained(model_dir).eval()(ids).logits)


def test_a_format_without_room_for_them_refuses_then_drops_them_when_allowed(tmp_path, model_dir):
    out = tmp_path / "model.safetensors"
    done = subprocess.run([*CLI, "convert", str(model_dir), str(out), "--to", "safetensors"], capture_output=True, text=True)
    assert done.returncode == LossyConversion.exit_code and "fields of hf" in done.stderr and "--allow-loss extra" in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not out.exists()
    ckpt_core.convert(model_dir, out, "safetensors", allow_loss=["extra"])
    back = tmp_path / "back"
    ckpt_core.convert(out, back, "hf")
    assert not _files(back)  # dropped, as allowed: the weights alone came back
