"""The core's conformance suite for both formats of the plugin."""

from __future__ import annotations

import torch
from lora_reference import fork_model
from lora_reference import checkpoint_dict, train
from test_lora_peft import tiny_peft

from ckpt_core import CorruptInput, NotFound, UnsafeInput
from ckpt_core.plugins import registry
from ckpt_core.testing import FormatConformance, checkpoints_for


class NotAllowed:
    """A class ``weights_only`` loading refuses."""


def _unsafe_pickle(directory):
    path = directory / "ckpt.pt"
    torch.save({"model": {"transformer.wte.lora_A.weight": torch.zeros(2, 2)}, "model_args": NotAllowed()}, path)
    return path


def _not_a_checkpoint(directory):
    path = directory / "ckpt.pt"
    torch.save({"model": [1, 2, 3], "model_args": {"attn_lora_rank": 4}}, path)
    return path


def _half_adapter(directory):
    model = fork_model()
    sd = model.state_dict()
    del sd["transformer.wte.lora_B.weight"]
    path = directory / "ckpt.pt"
    torch.save({"model": sd, "model_args": {"lora_alpha": 8.0, "attn_lora_rank": 4}}, path)
    return path


class TestLoraNanogptConformance(FormatConformance):
    format = "lora-nanogpt"
    bad_inputs = [
        ("a pickle that needs other globals", _unsafe_pickle, UnsafeInput),
        ("a model entry that is not a state dict", _not_a_checkpoint, CorruptInput),
        ("lora_A without lora_B", _half_adapter, CorruptInput),
    ]

    def make_example(self, tmp_path):
        model = fork_model({1: 0}, n_layer=3)
        opt, names = train(model, steps=2)
        torch.save(checkpoint_dict(model, opt, names, universal=False), tmp_path / "ckpt.pt")
        return tmp_path / "ckpt.pt"


def _peft_without_config(directory):
    tiny_peft(directory)
    (directory / "adapter" / "adapter_config.json").unlink()
    return directory / "adapter"


def _peft_foreign_key(directory):
    from safetensors.torch import load_file, save_file

    tiny_peft(directory)
    weights = directory / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    tensors["base_model.model.transformer.h.0.attn.c_attn.lora_magnitude_vector"] = torch.zeros(3)
    save_file(tensors, weights, {"format": "pt"})
    return directory / "adapter"


def _peft_half_adapter(directory):
    from safetensors.torch import load_file, save_file

    tiny_peft(directory)
    weights = directory / "adapter" / "adapter_model.safetensors"
    tensors = load_file(weights)
    del tensors["base_model.model.transformer.h.0.attn.c_attn.lora_B.weight"]
    save_file(tensors, weights, {"format": "pt"})
    return directory / "adapter"


def _on_weights(ck):
    """``ck`` (adapters alone) with every name a module's ``.weight``, as peft's keys are."""
    return ck.evolve(tensors={n + ".weight": t for n, t in ck.tensors.items()},
                     adapters={n + ".weight": ad for n, ad in ck.adapters.items()})


class TestPeftConformance(FormatConformance):
    format = "peft"

    def checkpoint_strategy(self):
        """gpt checkpoints (the base goes to base_model/ as HF GPT-2, tied only as its
        config.json can say: the head to the embedding), and adapters alone on
        '<module>.weight' names. Llama / Qwen bases go to base_model/ as hf directories,
        which hold HF teachers only: the every-pair test draws those (pairs_support), and
        test_lora_peft_families proves them with transformers and peft."""
        from ckpt_plugin_hf.config import tie_of
        from hypothesis import strategies as st

        spec = registry().spec(self.format)
        alone = checkpoints_for(spec, "generic", adapters=True, adapters_alone=True).map(_on_weights)
        gpt = checkpoints_for(spec, "gpt").filter(lambda ck: not ck.ties or ck.ties == tie_of("gpt"))
        return st.one_of(gpt, alone)
    bad_inputs = [
        ("a peft directory without its config", _peft_without_config, NotFound),
        ("a key peft's LoRA does not have", _peft_foreign_key, CorruptInput),
        ("lora_A without lora_B", _peft_half_adapter, CorruptInput),
    ]

    def make_example(self, tmp_path):
        tiny_peft(tmp_path)
        (tmp_path / "adapter" / "README.md").unlink()  # peft's model card, not part of the format
        return tmp_path / "adapter"
