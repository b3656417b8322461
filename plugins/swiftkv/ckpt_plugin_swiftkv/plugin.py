"""The ckpt-core hooks of ckpt-plugin-swiftkv: the ``swiftkv`` format (students, and
DeepSpeed resume state of one). Teachers are ckpt-plugin-hf's ``hf`` format, whose
families this plugin extends with the SwiftKV tensors (``families.hf_tensors``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ckpt_plugin_hf as hf
from ckpt_core import CkptError, Detection, FormatSpec, hookimpl

from . import deepspeed, directory
from .families import NORM_SWIFTKV, STUDENTS, family_of_model_type

SWIFTKV = directory.SWIFTKV

SPEC = FormatSpec(
    name=SWIFTKV,
    description="a SwiftKV student directory (variant A or B) or a DeepSpeed resume state of one",
    families=tuple(STUDENTS),
    capabilities=frozenset({"ties", "kv_sharing", "trainable"}),
    patterns=("config.json", "model*.safetensors", "pytorch_model*.bin", "latest", "*/mp_rank_00_model_states.pt",
              "global_step_*/"),
    options={
        "max_shard_size": "largest shard when writing, as 5GB (decimal, HF's way) or 4GiB; default 5GB",
        "kv_sharing_map": "variant B: consumer layer -> producer layer, as {12: 11, 16: 15}; checked against a student's own",
        "num_key_value_layers": "variant A: layers [0, N) keep their own KV; checked against a student's own",
        "key_value_group_size": "variant A: consecutive later layers sharing one KV projection (default 1)",
        "mlp_tuning_enabled": "variant B: true to add trainable MLP copies on consumer layers",
        "layernorm_tuning_enabled": "variant B: true to add trainable layernorm copies on consumer layers",
        "drop_swiftkv": "reading: true to read a student as its teacher, without its *_swiftkv tensors, map and "
                        "trainable set (then --to hf writes the teacher)",
    },
    run_dirs=True,
    extra_of=frozenset({hf.HF}),
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    try:
        if not path.is_dir():
            return None
        found = deepspeed.detect(path, SWIFTKV)  # first: an output directory may hold a config.json too
        if found is None and (path / hf.CONFIG).is_file():
            found = _detect_student(path)
        return found
    except (CkptError, OSError, ValueError):
        return None


def _detect_student(path: Path) -> Detection | None:
    """A student directory; a teacher is the ``hf`` format's."""
    try:
        config = hf.read_config(path)
    except CkptError:
        return None
    found = family_of_model_type(config.get("model_type"))
    if found is None:
        return None
    student_type = found[1]
    model_type = config["model_type"]
    try:
        if hf.weights(path) is None:
            return Detection(SWIFTKV, 0.05, f"config.json ({model_type}) but no weight files: not a checkpoint",
                             path) if student_type else None
        names = hf.tensor_names(path)
    except CkptError:
        names = None  # damaged weights: loading will say what is wrong
    extras = [n for n in names or () if "swiftkv" in n]
    if "kv_sharing_map" in config:
        return Detection(SWIFTKV, 0.95, f"SwiftKV variant B ({model_type}, kv_sharing_map in config.json)", path)
    if NORM_SWIFTKV in (names or ()) or (student_type and "num_key_value_layers" in config):
        return Detection(SWIFTKV, 0.95, f"SwiftKV variant A ({model_type}, num_key_value_layers, {NORM_SWIFTKV})", path)
    if student_type or extras:
        return Detection(SWIFTKV, 0.6, f"SwiftKV tensors or model_type {model_type} but no variant fields in config.json", path)
    return None


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families):
    if format != SWIFTKV:
        return None
    if deepspeed.tag_folder(path) is not None:
        return deepspeed.read(path, options, families)
    return directory.read(path, options)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != SWIFTKV:
        return None
    return directory.write(checkpoint, path, options)


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
