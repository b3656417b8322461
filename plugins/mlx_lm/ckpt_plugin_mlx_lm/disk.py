"""mlx-lm model directories on disk: the weight files, their index, the files beside them.

    config.json                    the HF config (+ quantization), keys sorted, indent 4
    model.safetensors              or model-0000k-of-0000n.safetensors, at most 5 GiB each
                                   (mlx-lm's MAX_FILE_SIZE_GB), metadata {"format": "mlx"}
    model.safetensors.index.json   always: {"metadata": {"total_size", "total_parameters"},
                                   "weight_map": sorted by name}, indent 4
    tokenizer.json, ...            every other top-level file, carried byte for byte

Reading takes the weights mlx-lm's ``load_model`` takes: every ``model*.safetensors``, joined
by the index when there is one (and then the index must name them all: mlx-lm would load a
stray one too). Every other top-level file is carried unopened (``ckpt_core.carried``).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from ckpt_core import CorruptInput, NotFound, Tensor, carried
from ckpt_core.safetensors_io import open_file, open_sharded, plain_file, read_header, write_bytes, write_sharded

CONFIG = "config.json"
INDEX = "model.safetensors.index.json"
SHARDS = "model*.safetensors"
MAX_SHARD_SIZE = "5GiB"


def is_own(name: str) -> bool:
    """Whether a top-level file is the config or a weight file (the rest are carried)."""
    return name in (CONFIG, INDEX) or fnmatch.fnmatchcase(name, SHARDS)


def weight_files(directory: Path) -> list[Path]:
    """The ``model*.safetensors`` files mlx-lm would load, by name (one that links out of
    the directory is refused, as an index's shard names are)."""
    return [plain_file(directory, p.name, directory) for p in sorted(directory.glob(SHARDS)) if p.is_file()]


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


def write(directory: Path, tensors: dict[str, Tensor], config: bytes, files: dict[str, Tensor | bytes],
          metadata: dict[str, str], total_parameters: int, max_shard_size: int | str) -> None:
    """Write a model directory at ``directory`` (which must not exist yet); ``files`` are
    the carried ones (``ckpt_core.carried``), already checked."""
    directory.mkdir()
    weight_map, _ = write_sharded(directory, tensors, max_shard_size, metadata=metadata, index=False)
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values()), "total_parameters": total_parameters},
             "weight_map": dict(sorted(weight_map.items()))}
    write_bytes(directory / INDEX, json.dumps(index, indent=4).encode())
    write_bytes(directory / CONFIG, config)
    carried.write(directory, files)
