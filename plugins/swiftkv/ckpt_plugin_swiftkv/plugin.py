"""The ckpt-core hooks of ckpt-plugin-swiftkv: the ``hf`` (teacher) and ``swiftkv``
(student, and DeepSpeed resume state) formats and the llama / qwen2 / qwen3 families."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import CkptError, Detection, FormatSpec, hookimpl

from . import deepspeed, directory, hfdir
from .families import FAMILIES, NORM_SWIFTKV, family_of_model_type

HF, SWIFTKV = directory.HF, directory.SWIFTKV
CAPS = {"ties", "kv_sharing", "trainable"}
SHARD_OPTION = "largest shard when writing, as 5GB (decimal, HF's way) or 4GiB; default 5GB"

SPECS = [
    FormatSpec(
        name=HF,
        description="a Hugging Face Llama / Qwen2 / Qwen3 model directory (a SwiftKV teacher)",
        families=tuple(FAMILIES),
        capabilities=frozenset(CAPS),
        patterns=("config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                  "pytorch_model.bin", "pytorch_model.bin.index.json"),
        options={
            "max_shard_size": SHARD_OPTION,
            "drop_swiftkv": "true: write a SwiftKV student's teacher, dropping its *_swiftkv tensors, map and trainable set",
        },
        extra_of=frozenset({SWIFTKV}),
    ),
    FormatSpec(
        name=SWIFTKV,
        description="a SwiftKV student directory (variant A or B) or a DeepSpeed resume state of one",
        families=tuple(FAMILIES),
        capabilities=frozenset(CAPS),
        patterns=("config.json", "model*.safetensors", "pytorch_model*.bin", "latest", "*/mp_rank_00_model_states.pt",
                  "global_step_*/"),
        options={
            "max_shard_size": SHARD_OPTION,
            "kv_sharing_map": "variant B: consumer layer -> producer layer, as {12: 11, 16: 15}; checked against a student's own",
            "num_key_value_layers": "variant A: layers [0, N) keep their own KV; checked against a student's own",
            "key_value_group_size": "variant A: consecutive later layers sharing one KV projection (default 1)",
            "mlp_tuning_enabled": "variant B: true to add trainable MLP copies on consumer layers",
            "layernorm_tuning_enabled": "variant B: true to add trainable layernorm copies on consumer layers",
        },
        run_dirs=True,
        extra_of=frozenset({HF}),
    ),
]


@hookimpl
def ckpt_formats():
    return SPECS


@hookimpl
def ckpt_families():
    return list(FAMILIES.values())


@hookimpl
def detect(path: Path):
    try:
        if not path.is_dir():
            return None
        found = deepspeed.detect(path, SWIFTKV)  # first: an output directory may hold a config.json too
        if found is None and (path / hfdir.CONFIG).is_file():
            found = _detect_model_dir(path)
        return found
    except (CkptError, OSError, ValueError):
        return None


def _detect_model_dir(path: Path) -> Detection | None:
    try:
        config = hfdir.read_config(path)
    except CkptError as e:
        if hfdir.weights(path) is None:
            return None
        return Detection(HF, 0.3, f"model weights beside an unreadable config.json ({e})", path)
    found = family_of_model_type(config.get("model_type"))
    if found is None:
        return None
    family, student_type = found
    model_type = config["model_type"]
    try:
        if hfdir.weights(path) is None:
            return Detection(SWIFTKV if student_type else HF, 0.05,
                             f"config.json ({model_type}) but no weight files: not a checkpoint", path)
        names = hfdir.tensor_names(path)
    except CkptError:
        names = None  # damaged weights: loading will say what is wrong
    extras = [n for n in names or () if "swiftkv" in n]
    if "kv_sharing_map" in config:
        return Detection(SWIFTKV, 0.95, f"SwiftKV variant B ({model_type}, kv_sharing_map in config.json)", path)
    if NORM_SWIFTKV in (names or ()) or (student_type and "num_key_value_layers" in config):
        return Detection(SWIFTKV, 0.95, f"SwiftKV variant A ({model_type}, num_key_value_layers, {NORM_SWIFTKV})", path)
    if student_type or extras:
        return Detection(SWIFTKV, 0.6, f"SwiftKV tensors or model_type {model_type} but no variant fields in config.json", path)
    return Detection(HF, 0.9, f"Hugging Face {family} directory (model_type {model_type}): a SwiftKV teacher", path)


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any]):
    if format not in (HF, SWIFTKV):
        return None
    if format == SWIFTKV and deepspeed.tag_folder(path) is not None:
        return deepspeed.read(path, options)
    return directory.read(path, format, options)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format not in (HF, SWIFTKV):
        return None
    return directory.write(checkpoint, path, format, options)


@hookimpl
def train_state(path: Path, format: str):
    if format != SWIFTKV or deepspeed.tag_folder(path) is None:
        return None
    return deepspeed.train_state(path)


@hookimpl
def list_checkpoints(run_dir: Path, format: str):
    if format != SWIFTKV:
        return None
    return deepspeed.list_run(run_dir)
