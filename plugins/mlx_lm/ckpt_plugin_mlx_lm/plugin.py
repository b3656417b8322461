"""The ckpt-core hooks of ckpt-plugin-mlx-lm: format ``mlx-lm``, mlx-lm model directories
(what ``mlx_lm.convert`` and ``mlx_lm.utils.save`` write, the mlx-community layout), read and
written without mlx. Where each file lands in the canonical model:

    model*.safetensors         {name}     -> tensors[{name}]   (names kept as they are)
                               metadata "ckpt_core" -> arch, ties, KV sharing, trainable, layouts
    config.json                model_type, sizes, tie -> arch (family, hyper-parameters), ties
                               quantization -> arch.params["quantization"] (weights stay packed)
                               other fields -> extra["hf"]["config"]
    tokenizer.json, ...        -> extra["hf"]["files"][{file name}]  (bytes, unread)

and mlx-lm LoRA adapter directories (``adapter_config.json`` + ``adapters.safetensors``), read
as adapters on absent bases and written for a checkpoint that holds adapters alone
(``adapters``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_core import CkptError, Detection, FormatSpec, hookimpl, jsonfile
from ckpt_core.model import QUANTIZATION
from ckpt_core.schema import FamilySchema

from . import adapters, directory, disk

NAME = directory.NAME
# What mx.load reads: no float64, and of the fp8 kinds only E4M3 (as uint8, bytes intact).
DTYPES = frozenset({"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "BF16", "F32", "F8_E4M3", "C64"})

SPEC = FormatSpec(
    name=NAME,
    description="an mlx-lm model directory (mlx-community layout): config.json, model*.safetensors with its index, "
                "tokenizer files; quantized or not; or an mlx-lm LoRA adapters directory",
    capabilities=frozenset({"ties", "kv_sharing", "trainable", "quantized", "adapters", "adapters_alone"}),
    dtypes=DTYPES,
    patterns=(disk.CONFIG, "model.safetensors", "model-*-of-*.safetensors", disk.INDEX, adapters.CONFIG, adapters.WEIGHTS),
    options={
        "dequantize": "true: unpack quantized weights (affine) into their scales' dtype, exactly as mx.dequantize: "
                      "while reading (for formats that cannot hold packed weights) or before writing",
        "max_shard_size": "largest weight file when writing, as 5GiB (mlx-lm's limit, the default) or 2GB",
    },
    extra_of=frozenset({directory.HF}),
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    try:
        if adapters.is_adapters(path):
            return _detect_adapters(path)
        if path.is_dir() and (path / disk.CONFIG).is_file():
            return _detect_model_dir(path)
        return None
    except (CkptError, OSError, ValueError):
        return None


def _detect_model_dir(path: Path) -> Detection | None:
    metadata = disk.first_metadata(path)
    if metadata is None:
        return None
    if metadata.get("format") == "mlx":
        return Detection(NAME, 0.95, 'mlx-lm model directory (weights with metadata {"format": "mlx"})', path)
    if isinstance(jsonfile.read_object(path / disk.CONFIG).get(QUANTIZATION), dict):
        return Detection(NAME, 0.95, "mlx-lm model directory (quantization in config.json)", path)
    return Detection(NAME, 0.3, "Hugging Face style model directory, which mlx-lm loads too", path)


def _detect_adapters(path: Path) -> Detection:
    try:
        lora = adapters.lora_parameters(path)["lora_parameters"]
    except CkptError as e:
        return Detection(NAME, 0.3, f"an mlx-lm adapters directory that does not read ({e})", path)
    return Detection(NAME, 0.95, f"mlx-lm LoRA adapters: rank {lora.get('rank')}, scale {lora.get('scale')}, "
                                 f"keys {', '.join(map(str, lora.get('keys') or ['default']))}", path)


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]):
    if format != NAME:
        return None
    if adapters.is_adapters(path):
        return adapters.read(path)
    return directory.read(path, options, families)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != NAME:
        return None
    if checkpoint.adapters:
        adapters.write(checkpoint, path)
        return True
    return directory.write(checkpoint, path, options)
