"""The safetensors variant of DCP: what ``HuggingFaceStorageWriter(save_distributed=True)``
writes, one ``shard-0000R-model-00001-of-00001.safetensors`` per rank and no ``.metadata``.

Each shard's header metadata holds ``DCP_SHARDING_INFO``, ``{fqn: {"saved_offsets": [...]}}``:
where each of its tensors lies in the full one. A full tensor's size is where its chunks
end; they must tile it exactly (``metadata.check_tiling``). With ``enable_consolidation`` the
shards are under ``sharded/`` beside a consolidated copy, which is not read (it holds the
same bytes). Only model weights: the writer stores nothing else validly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ckpt_core import CorruptInput, Tensor, safetensors_io

from .items import join
from .metadata import Chunk, check_tiling

INFO = "DCP_SHARDING_INFO"
SHARD = re.compile(r"shard-\d+-model-\d+-of-\d+\.safetensors")
CONSOLIDATED = "sharded"


def shard_files(directory: Path) -> list[Path]:
    """The shard files of ``directory`` (or of its ``sharded/`` folder), in rank order."""
    for folder in (directory, directory / CONSOLIDATED):
        files = sorted(p for p in folder.glob("shard-*.safetensors") if SHARD.fullmatch(p.name) and p.is_file())
        if files:
            return files
    return []


def is_shard(path: Path) -> bool:
    """Whether a file's header says DCP wrote it (reads the header only)."""
    try:
        return INFO in (safetensors_io.read_header(path)[1] or {})
    except CorruptInput:
        return False


def read(directory: Path) -> tuple[dict[str, Tensor], str, list[str]]:
    """The full tensors the shards of ``directory`` hold, in the order they first appear;
    the variant (``hf-shards``, or ``hf-consolidated`` when they are under ``sharded/``)
    and the shard file names."""
    pieces: dict[str, list[tuple[Chunk, Tensor]]] = {}
    files = shard_files(directory)
    for f in files:
        tensors, meta = safetensors_io.open_file(f)
        try:
            info = json.loads((meta or {})[INFO])
        except (KeyError, ValueError, TypeError, RecursionError):
            raise CorruptInput(f"{f}: no readable {INFO} in its header; not a shard DCP wrote") from None
        for name, t in tensors.items():
            offsets = info.get(name, {}).get("saved_offsets") if isinstance(info, dict) and isinstance(info.get(name), dict) else None
            if not (isinstance(offsets, list) and len(offsets) == len(t.shape)
                    and all(type(o) is int and o >= 0 for o in offsets)):
                raise CorruptInput(f"{f}: {INFO} gives {name!r} no offsets for its {len(t.shape)} dimensions")
            pieces.setdefault(name, []).append((Chunk(tuple(offsets), t.shape, None), t))
    tensors = {}
    for name, parts in pieces.items():
        dtypes, ranks = {t.dtype for _, t in parts}, {len(t.shape) for _, t in parts}
        if len(dtypes) != 1 or len(ranks) != 1:
            raise CorruptInput(f"{directory}: the shards of {name!r} disagree in dtype or rank ({sorted(dtypes)})")
        size = tuple(max(c.offsets[d] + c.sizes[d] for c, _ in parts) for d in range(ranks.pop()))
        check_tiling(name, size, [c for c, _ in parts], str(directory))
        tensors[name] = join(dtypes.pop(), size, parts)
    consolidated = bool(files) and files[0].parent != directory
    return tensors, "hf-consolidated" if consolidated else "hf-shards", [f.name for f in files]
