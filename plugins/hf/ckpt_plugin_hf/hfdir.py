"""Hugging Face model directories on disk: config.json, weight files, the other files.

Reading takes the weights transformers' ``from_pretrained`` takes, in its order (5.x,
``_get_resolved_checkpoint_files``): ``model.safetensors``, then
``model.safetensors.index.json`` (its ``weight_map``, whatever the shard names), then
``pytorch_model.bin``, then ``pytorch_model.bin.index.json`` (pickles read by the inert
scanner: nothing runs, nothing is read until used); only when none of those is there,
another lone ``*.safetensors`` file or index. Weight files outside the chosen set are
ignored (not read, not carried) and named by ``ignored`` (``inspect`` lists them). Writing
always produces HF-standard safetensors shards with metadata ``{"format": "pt"}`` and an index
when there are several. Every other top-level file (tokenizer, generation config,
``training_args.bin``) is carried unopened, as a lazy U8 tensor over the file's bytes: a
large file costs nothing until it is written, and then it is streamed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ckpt_core import CorruptInput, NotFound, Tensor, UnsafeInput, jsonfile, torchfile
from ckpt_core.safetensors_io import INDEX_SUFFIX, find_index, open_file, open_sharded, read_header, read_index, \
    write_bytes, write_sharded

CONFIG = "config.json"
SAFETENSORS = "model.safetensors"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
MAX_CONFIG = 10_000_000


def is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", INDEX_SUFFIX)) or (name.startswith("pytorch_model") and name.endswith((".bin", ".bin.index.json")))


def read_config(directory: Path) -> dict:
    """config.json as a dict: CorruptInput when it is not a JSON object."""
    path = directory / CONFIG
    if not path.is_file():
        raise NotFound(f"{directory}: no {CONFIG}; a Hugging Face model directory has one")
    if path.stat().st_size > MAX_CONFIG:
        raise CorruptInput(f"{path}: {path.stat().st_size} bytes is too large for a model config")
    return jsonfile.read_object(path)


# transformers' order (from_pretrained): the first of these that is a file holds the weights
PRECEDENCE = ((SAFETENSORS, "safetensors"), (f"model{INDEX_SUFFIX}", "safetensors"), (BIN, "bin"), (BIN_INDEX, "bin"))


def weights(directory: Path) -> tuple[str, Path] | None:
    """Which weights the directory has: ("safetensors" | "bin", the index or single file)."""
    for name, kind in PRECEDENCE:
        if (directory / name).is_file():
            return kind, directory / name
    index = find_index(directory)
    if index is not None:
        return "safetensors", index
    found = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    if len(found) > 1:
        raise CorruptInput(f"{directory}: {len(found)} .safetensors files and no *{INDEX_SUFFIX} to say how they join")
    return ("safetensors", found[0]) if found else None


def ignored(directory: Path, chosen: Path) -> list[str]:
    """The directory's weight files that are not ``chosen`` (an index and its shards, or one
    file), by name: what a reader of ``chosen`` leaves alone."""
    used = {chosen.name}
    if chosen.name.endswith(".json"):
        used |= {p.name for p in read_index(chosen)[0].values()}
    return sorted(p.name for p in directory.iterdir() if is_weight_file(p.name) and p.name not in used and p.is_file())


def no_weights(directory: Path) -> NotFound:
    return NotFound(f"{directory}: {CONFIG} but no weight files ({SAFETENSORS}, model{INDEX_SUFFIX}, {BIN} or "
                    f"{BIN_INDEX}): not a checkpoint")


def tensor_names(directory: Path) -> list[str] | None:
    """Tensor names from headers and indexes only (None for a lone pytorch_model.bin)."""
    found = weights(directory)
    if found is None:
        return None
    kind, path = found
    if path.name.endswith(".json"):
        return list(read_index(path)[0])
    if kind == "safetensors":
        return list(read_header(path)[0])
    return None


def open_weights(directory: Path) -> tuple[dict[str, Tensor], str, list[str], dict[str, str]]:
    """Lazy tensors of the directory's weights, which kind they are, the weight files
    ignored beside them, and the (first) safetensors file's metadata."""
    found = weights(directory)
    if found is None:
        raise no_weights(directory)
    kind, path = found
    tensors = _open(path, kind)
    first = next(iter(tensors.values()), None)
    metadata = dict(read_header(first.file_range.path)[1] or {}) if kind == "safetensors" and first is not None else {}
    return tensors, kind, ignored(directory, path), metadata


def _open(path: Path, kind: str) -> dict[str, Tensor]:
    if kind == "safetensors":
        return open_sharded(path)[0] if path.name.endswith(".json") else open_file(path)[0]
    if path.name == BIN:
        return _bin_tensors(path)
    weight_map, _ = read_index(path)
    tensors: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values()), key=lambda p: p.name):
        content = _bin_tensors(shard)
        stray = [n for n in content if weight_map.get(n) != shard]
        if stray:
            raise CorruptInput(f"{shard}: tensor {stray[0]!r} is not in the index {path.name}")
        tensors.update(content)
    missing = [n for n in weight_map if n not in tensors]
    if missing:
        raise CorruptInput(f"{path}: index puts {missing[0]!r} in {weight_map[missing[0]].name}, which has no such tensor")
    return tensors


def _bin_tensors(path: Path) -> dict[str, Tensor]:
    state = torchfile.load(path)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CorruptInput(f"{path}: not a state dict (a mapping of names to tensors)")
    return state


def carried_files(directory: Path) -> dict[str, Tensor]:
    """Every other top-level file, by name (tokenizer, generation config, ...), unread."""
    return {p.name: Tensor.from_file(p, 0, "U8", (p.stat().st_size,)) for p in sorted(directory.iterdir())
            if p.is_file() and p.name != CONFIG and not is_weight_file(p.name)}


def write(directory: Path, tensors: dict[str, Tensor], config: dict, files: dict[str, Tensor | bytes],
          max_shard_size: int | str, metadata: dict[str, str]) -> None:
    """Write a model directory at ``directory`` (which must not exist yet); every shard's
    metadata is ``{"format": "pt"}`` and ``metadata``."""
    for name in files:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UnsafeInput(f"carried file name {name!r} is not a plain file name")
        if name == CONFIG or is_weight_file(name):
            raise CorruptInput(f"carried file {name!r} would clash with the weights or config this writes")
    directory.mkdir()
    write_sharded(directory, tensors, max_shard_size, metadata={"format": "pt", **metadata})
    write_bytes(directory / CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    for name, data in files.items():
        if isinstance(data, Tensor):
            write_file(directory / name, data)
        else:
            write_bytes(directory / name, data)


def write_file(path: Path, data: Tensor) -> None:
    """Stream a carried file's bytes to a new file and fsync it."""
    with open(path, "xb") as f:
        for chunk in data.iter_chunks():
            f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
