"""A DCP ``.metadata`` file read without torch: what each key is and where its chunks lie.

``.metadata`` is a bare pickle of ``torch.distributed.checkpoint.metadata.Metadata``. It is
unpickled by ckpt-core's allow-list scanner (``torchfile.scan_bytes``), which runs
nothing: torch's classes come back as inert Records (name, arguments, state). Only DCP's
own metadata classes (``STAND_INS``) are read, field by field, into the plain classes
below; a pickle naming any other class is refused with UnsafeInput naming it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs
from ckpt_core import CorruptInput, UnsafeInput, dtypes
from ckpt_core.torchfile import Record, scan_bytes

NAME = ".metadata"
MAX_BYTES = 256 * 1024 * 1024  # structure only: 43 KB for a small model with AdamW state

_META = "torch.distributed.checkpoint.metadata."
# Every class a .metadata pickle may name, and what it is read as.
STAND_INS = {
    _META + "Metadata", _META + "TensorStorageMetadata", _META + "TensorProperties", _META + "ChunkStorageMetadata",
    _META + "BytesStorageMetadata", _META + "MetadataIndex", _META + "StorageMeta", _META + "_MEM_FORMAT_ENCODING",
    "torch.distributed.checkpoint.filesystem._StorageInfo", "torch.serialization._get_layout", "pathlib.PosixPath",
    "pathlib.PurePosixPath",
}


@attrs.frozen
class Storage:
    """Where one item (a tensor chunk or a bytes value) lies: ``length`` bytes at ``offset``
    of the file ``relative_path`` in the checkpoint's directory."""

    relative_path: str
    offset: int
    length: int


@attrs.frozen
class Chunk:
    """One stored piece of a tensor: its place in the full tensor and its item (None for a
    tensor of a safetensors shard, which is its own file range)."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    storage: Storage | None


@attrs.frozen
class Entry:
    """One flat key of the saved state dict: a tensor (``dtype``, ``size``, ``chunks``) or a
    bytes value (``dtype`` None, one chunk holding its item). ``path`` is where the key was
    in the nested dict ``dcp.save`` was given (``("optim", "state", fqn, "exp_avg")``)."""

    key: str
    path: tuple[Any, ...]
    dtype: str | None
    size: tuple[int, ...] | None
    chunks: tuple[Chunk, ...]


def read(directory: Path) -> list[Entry]:
    """The entries of the DCP checkpoint in ``directory``, in the metadata's order."""
    path = directory / NAME
    where = str(path)
    with open(path, "rb") as f:
        data = f.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise CorruptInput(f"{where}: over {MAX_BYTES} bytes, too large to be a checkpoint's metadata")
    obj, records = scan_bytes(data, where)
    unknown = [name for name in records if name not in STAND_INS]
    if unknown:
        raise UnsafeInput(f"{where}: the pickle names {', '.join(unknown)}, which DCP metadata never holds; "
                          "refused (nothing from it ran)")
    meta = _fields(obj, "Metadata", ("state_dict_metadata", "planner_data", "storage_data"), where)
    storage = _storage_map(meta["storage_data"], where)
    planner = meta["planner_data"] if isinstance(meta["planner_data"], dict) else {}
    entries = meta["state_dict_metadata"]
    if not isinstance(entries, dict):
        raise CorruptInput(f"{where}: state_dict_metadata is not a mapping")
    return [_entry(key, value, planner.get(key), storage, where) for key, value in entries.items()]


def _name(value: Any) -> str:
    """The class name a Record (or a Record class: a global such as ``torch.strided``) stands for."""
    return getattr(value, "qualname", type(value).__name__).rsplit(".", 1)[-1]


def _fields(record: Any, cls: str, names: tuple[str, ...], where: str) -> dict[str, Any]:
    """The fields ``names`` of an instance of DCP's ``cls`` as the pickle built it: a
    dataclass's ``__dict__`` state, or positional arguments."""
    if not (isinstance(record, Record) and _name(record) == cls):
        raise CorruptInput(f"{where}: expected a {cls}, found {_name(record)}")
    state = record.state
    if isinstance(state, tuple) and len(state) == 2 and state[0] is None:  # (dict, slots) of a slotted class
        state = state[1]
    if isinstance(state, dict):
        found = {k: state.get(k) for k in names}
    elif state is None and len(record.args) <= len(names):
        found = dict(zip(names, record.args)) | {k: None for k in names[len(record.args):]}
    else:
        raise CorruptInput(f"{where}: a {cls} with unexpected state {type(state).__name__}")
    return found


def _ints(value: Any, what: str, where: str) -> tuple[int, ...]:
    if not (isinstance(value, (tuple, list)) and all(type(v) is int and v >= 0 for v in value)):
        raise CorruptInput(f"{where}: {what} is {value!r}, not a tuple of non-negative integers")
    return tuple(value)


def _storage_map(storage_data: Any, where: str) -> dict[tuple[str, tuple[int, ...] | None], Storage]:
    """``storage_data`` keyed by (fqn, chunk offsets; None for a bytes value)."""
    if not isinstance(storage_data, dict):
        raise CorruptInput(f"{where}: storage_data is not a mapping")
    found = {}
    for index, info in storage_data.items():
        idx = _fields(index, "MetadataIndex", ("fqn", "offset", "index"), where)
        st = _fields(info, "_StorageInfo", ("relative_path", "offset", "length", "transform_descriptors"), where)
        fqn, offset = idx["fqn"], idx["offset"]
        if not isinstance(fqn, str):
            raise CorruptInput(f"{where}: a storage index names {fqn!r}, not a key")
        name = st["relative_path"]
        if not (isinstance(name, str) and name and "/" not in name and "\\" not in name and name not in (".", "..")
                and "\x00" not in name):
            raise UnsafeInput(f"{where}: item {fqn!r} lies in {name!r}, not a file of the checkpoint's directory; refused")
        if not (type(st["offset"]) is int and type(st["length"]) is int and st["offset"] >= 0 and st["length"] > 0):
            raise CorruptInput(f"{where}: item {fqn!r} has offset {st['offset']!r} and length {st['length']!r}")
        if st["transform_descriptors"]:
            raise CorruptInput(f"{where}: item {fqn!r} is stored transformed ({st['transform_descriptors']!r}), "
                               "which this reader does not undo")
        key = (fqn, None if offset is None else _ints(offset, f"the offset of {fqn!r}", where))
        found[key] = Storage(name, st["offset"], st["length"])
    return found


def _entry(key: str, value: Any, path: Any, storage: dict, where: str) -> Entry:
    if not isinstance(key, str):
        raise CorruptInput(f"{where}: a state dict key is {key!r}, not a string")
    if not (isinstance(path, tuple) and path and all(isinstance(p, (str, int)) for p in path)):
        path = (key,)
    kind = _name(value) if isinstance(value, Record) else type(value).__name__
    if kind == "BytesStorageMetadata":
        item = storage.get((key, None)) or storage.get((key, ()))
        if item is None:
            raise CorruptInput(f"{where}: no storage for the value {key!r}")
        return Entry(key, path, None, None, (Chunk((), (), item),))
    if kind != "TensorStorageMetadata":
        raise CorruptInput(f"{where}: {key!r} is described by a {kind}, not tensor or bytes metadata")
    fields = _fields(value, "TensorStorageMetadata", ("properties", "size", "chunks"), where)
    size = _ints(fields["size"], f"the size of {key!r}", where)
    dtype = _dtype(fields["properties"])
    if dtype is None:
        raise CorruptInput(f"{where}: {key!r} has no dtype ckpt-core knows")
    if not isinstance(fields["chunks"], list) or not fields["chunks"]:
        raise CorruptInput(f"{where}: {key!r} has no chunks")
    chunks = []
    for chunk in fields["chunks"]:
        c = _fields(chunk, "ChunkStorageMetadata", ("offsets", "sizes"), where)
        offsets = _ints(c["offsets"], f"a chunk offset of {key!r}", where)
        sizes = _ints(c["sizes"], f"a chunk size of {key!r}", where)
        item = storage.get((key, offsets))
        if item is None:
            raise CorruptInput(f"{where}: no storage for the chunk of {key!r} at {list(offsets)}")
        chunks.append(Chunk(offsets, sizes, item))
    check_tiling(key, size, chunks, where)
    return Entry(key, path, dtype, size, tuple(chunks))


def _dtype(props: Any) -> str | None:
    """The dtype of a TensorProperties: the first of the tuple its ``__getstate__`` gives
    (or its ``dtype`` field), which the scanner reads as a dtype stand-in with a ``name``."""
    if not (isinstance(props, Record) and _name(props) == "TensorProperties"):
        return None
    state = props.state
    dtype = state[0] if isinstance(state, tuple) and state else state.get("dtype") if isinstance(state, dict) else None
    name = getattr(dtype, "name", None)
    return name if isinstance(name, str) and name in dtypes.DTYPES else None


def check_tiling(key: str, size: tuple[int, ...], chunks: list[Chunk], where: str) -> None:
    """Chunks must lie inside the tensor of ``size``, not overlap, and cover it: together
    exactly it. CorruptInput naming ``where`` otherwise."""
    for c in chunks:
        if len(c.offsets) != len(size) or len(c.sizes) != len(size) or any(
                o + n > d for o, n, d in zip(c.offsets, c.sizes, size)):
            raise CorruptInput(f"{where}: a chunk of {key!r} at {list(c.offsets)} of size {list(c.sizes)} "
                               f"lies outside its size {list(size)}")
    solid = [c for c in chunks if math.prod(c.sizes)]
    for i, a in enumerate(solid):
        for b in solid[i + 1:]:
            if all(x < y + m and y < x + n for x, n, y, m in zip(a.offsets, a.sizes, b.offsets, b.sizes)):
                raise CorruptInput(f"{where}: chunks of {key!r} at {list(a.offsets)} and {list(b.offsets)} overlap")
    if sum(math.prod(c.sizes) for c in solid) != math.prod(size):
        raise CorruptInput(f"{where}: the chunks of {key!r} do not cover its size {list(size)} (a chunk is missing)")
