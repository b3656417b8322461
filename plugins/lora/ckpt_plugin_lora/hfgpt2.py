"""Hugging Face ``GPT2LMHeadModel`` directories: the base model peft adapters attach to.

``config.json`` + ``model.safetensors`` (or shards with an index). Names are nanoGPT's;
the four Conv1D weights are stored [in, out] and are transposed exactly (``keys.HF_GPT2``).
``lm_head.weight`` is not stored when ``tie_word_embeddings`` (the default): a tie. A
directory ckpt-core writes also keeps the hyper-parameters and ties under the
safetensors metadata key ``ckpt_core``, so it reads back exactly.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ckpt_core import Arch, Checkpoint, CkptError, CkptWarning, CorruptInput, Layout, files, graph, jsonfile, safetensors_io

from . import keys

CONFIG = "config.json"
LAYOUT = "hf-gpt2"
META_KEY = "ckpt_core_hf_gpt2"  # not the safetensors format's key: these names are HF's, transposed
HEAD, TABLE = "lm_head.weight", "transformer.wte.weight"
# config.json key -> canonical hyper-parameter
CONFIG_KEYS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "d_model", "n_positions": "block_size",
               "vocab_size": "vocab_size", "n_inner": "d_ff"}


def _config(path: Path) -> dict | None:
    try:
        config = json.loads(files.read_text(path / CONFIG, jsonfile.MAX_BYTES))
    except (CkptError, OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return config if isinstance(config, dict) else None


def is_hf_gpt2(path: Path) -> bool:
    config = _config(path) if path.is_dir() else None
    return config is not None and config.get("model_type") == "gpt2"


def read(path: Path) -> Checkpoint:
    config = _config(path) or {}
    index = safetensors_io.find_index(path)
    if index is not None:
        tensors, _ = safetensors_io.open_sharded(index)
        first = next(iter(tensors.values()), None)
        metadata = safetensors_io.read_header(first.file_range.path)[1] if first is not None else None
    elif (path / "model.safetensors").is_file():
        tensors, metadata = safetensors_io.open_file(path / "model.safetensors")
    else:
        raise CorruptInput(f"{path}: an HF GPT-2 directory without model.safetensors")
    if TABLE not in tensors and "wte.weight" in tensors:  # saved from GPT2Model (the hub's gpt2): no prefix
        tensors = {k if k == HEAD else "transformer." + k: t for k, t in tensors.items()}
    out = {}
    for key, t in tensors.items():
        name, part = keys.match(keys.HF_GPT2, key) or (key, "base")
        out[name] = keys.orient(t, part)
    stored = (metadata or {}).get(META_KEY)
    if stored is not None:
        g = graph.from_json(stored, f"{path}: metadata {META_KEY!r}")
        params, ties = g.arch.params, g.ties
    else:
        params = {CONFIG_KEYS[k]: v for k, v in config.items() if k in CONFIG_KEYS and v is not None}
        if "d_model" in params and "d_ff" not in params:
            params["d_ff"] = 4 * params["d_model"]
        tied = HEAD not in out and TABLE in out and config.get("tie_word_embeddings", True)
        ties = {HEAD: TABLE} if tied else {}
    return Checkpoint(arch=Arch("gpt", params), tensors=out, ties=ties,
                      layout=Layout(LAYOUT, "", {"config": config}, g.layouts if stored is not None else ()))


def write(ck: Checkpoint, path: Path, config: dict | None = None) -> None:
    """``ck`` (no adapters) as an HF GPT-2 directory at ``path`` (a new directory)."""
    metadata = {"format": "pt", META_KEY: graph.to_json(ck, "an HF GPT-2 directory", "peft")}  # a peft directory's base
    p = ck.arch.params
    if config is None:
        config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu",
                  "layer_norm_epsilon": 1e-5, "n_layer": p.get("n_layer"), "n_head": p.get("n_head"),
                  "n_embd": p.get("d_model"), "n_positions": p.get("block_size"), "vocab_size": p.get("vocab_size"),
                  "n_inner": p.get("d_ff"), "tie_word_embeddings": ck.ties.get(HEAD) == TABLE}
        if "transformer.h.0.attn.c_attn.bias" not in ck.tensors:
            warnings.warn("the base model has no biases (nanoGPT bias=False); HF GPT-2 expects them and "
                          "transformers initialises the missing ones", CkptWarning, stacklevel=3)
    tensors = {}
    for name, t in ck.tensors.items():
        key = keys.upstream(keys.HF_GPT2, name, "T")
        tensors[key or name] = t.T if key else t
    path.mkdir()
    safetensors_io.write_file(path / "model.safetensors", tensors, metadata)
    safetensors_io.write_bytes(path / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
