"""mlx-lm model directories on disk: the weight files, their index, the files beside them.

    config.json                    the HF config (+ quantization), keys sorted, indent 4
    model.safetensors              or model-0000k-of-0000n.safetensors, at most 5 GiB each
                                   (mlx-lm's MAX_FILE_SIZE_GB), metadata {"format": "mlx"}
    model.safetensors.index.json   always: {"metadata": {"total_size", "total_parameters"},
                                   "weight_map": sorted by name}, indent 4
    tokenizer.json, ...            every other top-level file, carried byte for byte

Reading takes the weights mlx-lm's ``load_model`` takes: every ``model*.safetensors``, joined
by the index when there is one (and then the index must name them all: mlx-lm would load a
stray one too). Every other top-level file is carried unopened, as a lazy U8 tensor over the
file's bytes (copied file to file when written).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from ckpt_core import CorruptInput, NotFound, Tensor, UnsafeInput
from ckpt_core.safetensors_io import open_file, open_sharded, plain_file, read_header, write_bytes, write_raw, write_sharded

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SHARDS = "model*.safetensors"
MAX_SHARD_SIZE = "5GiB"


def is_weight_file(name: str) -> bool:
    return name == INDEX or fnmatch.fnmatchcase(name, SHARDS)


def weight_files(directory: Path) -> list[Path]:
    """The ``model*.safetensors`` files mlx-lm would load, by name."""
    return sorted(p for p in directory.glob(SHARDS) if p.is_file())


def first_metadata(directory: Path) -> dict[str, str] | None:
    """The metadata of the directory's first weight file (None: no weight file)."""
    found = weight_files(directory)
    return dict(read_header(found[0])[1] or {}) if found else None


def read_weights(directory: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Lazy tensors of the directory's weights (shard by shard, in header order) and the
    first file's metadata."""
    found = weight_files(directory)
    index = directory / INDEX
    if index.is_file():
        tensors, _ = open_sharded(index)
        listed = sorted({t.file_range.path for t in tensors.values()}, key=lambda p: p.name)
        stray = [p for p in found if p not in listed and read_header(p)[0]]
        if stray:
            raise CorruptInput(f"{stray[0]}: not in {INDEX}, but mlx-lm loads the tensors of every {SHARDS}: "
                               "remove it or add its tensors to the index")
        first = (listed or found or [None])[0]
    else:
        if not found:
            raise NotFound(f"{directory}: {CONFIG} but no {SHARDS} weight files: not an mlx-lm model directory")
        tensors = {}
        for path in found:
            content = open_file(path)[0]
            twice = next((n for n in content if n in tensors), None)
            if twice is not None:
                raise CorruptInput(f"{path}: tensor {twice!r} is also in {tensors[twice].file_range.path.name}")
            tensors.update(content)
        first = found[0]
    return tensors, dict(read_header(first)[1] or {}) if first is not None else {}


def carried_files(directory: Path) -> dict[str, Tensor]:
    """Every other top-level file, by name (tokenizer, generation config, README, ...), unread.
    A link out of the directory is refused, as an index's shard names are."""
    found = {}
    for p in sorted(directory.iterdir()):
        if p.name != CONFIG and not is_weight_file(p.name) and p.is_file():
            path = plain_file(directory, p.name, directory)
            found[p.name] = Tensor.from_file(path, 0, "U8", (path.stat().st_size,))
    return found


def write(directory: Path, tensors: dict[str, Tensor], config: bytes, files: dict[str, Tensor | bytes],
          metadata: dict[str, str], total_parameters: int, max_shard_size: int | str) -> None:
    """Write a model directory at ``directory`` (which must not exist yet)."""
    for name in files:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UnsafeInput(f"carried file name {name!r} is not a plain file name")
        if name == CONFIG or is_weight_file(name):
            raise CorruptInput(f"carried file {name!r} would clash with the weights or config this writes")
    directory.mkdir()
    weight_map, _ = write_sharded(directory, tensors, max_shard_size, metadata=metadata, index=False)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values()), "total_parameters": total_parameters},
             "weight_map": dict(sorted(weight_map.items()))}
    write_bytes(directory / INDEX, json.dumps(index, indent=4).encode())
    write_bytes(directory / CONFIG, config)
    for name, data in files.items():
        if isinstance(data, Tensor):
            write_raw(directory / name, data)
        else:
            write_bytes(directory / name, data)
