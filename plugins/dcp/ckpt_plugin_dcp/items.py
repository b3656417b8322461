"""The items of ``.distcp`` files: each a complete, uncompressed ``torch.save`` zip at a
known range of its file, read in place without torch.

A tensor chunk's bytes are its zip's ``data/0`` record: a file range, found through the
record's local header and checked against the zip's own structure and the metadata (dtype,
shape, byte count). A tensor of several chunks is their concatenation when they split
dim 0 only (FSDP2's sharding: a lazy concat of file ranges), else one buffer filled chunk
by chunk when first read. A bytes value's item is unpickled by the allow-list scanner.
"""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import Any

from ckpt_core import CorruptInput, NotFound, Tensor, dtypes, files
from ckpt_core.torchfile import MAX_PICKLE_BYTES, TensorStub, data_offset, pickle_member, scan_bytes

from .metadata import Chunk, Entry, Storage


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from ``start``, as a file of their own (a zip item
    inside a ``.distcp`` file, which ``zipfile`` then reads as a whole zip)."""

    def __init__(self, f, start: int, length: int):
        self.f, self.start, self.length, self.pos = f, start, length, 0
        self.name = f"{f.name}@{start}"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence])
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.length - self.pos))
        self.f.seek(self.start + self.pos)
        data = self.f.read(count)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


class Items:
    """Reads the items of one checkpoint directory, each file's size checked once."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.sizes: dict[str, int] = {}

    def _file(self, st: Storage, key: str) -> Path:
        path = self.directory / st.relative_path
        if st.relative_path not in self.sizes:
            if path.is_symlink() or not path.is_file():
                raise NotFound(f"{path}: missing (the checkpoint's metadata stores {key!r} there)")
            self.sizes[st.relative_path] = path.stat().st_size
        if st.offset + st.length > self.sizes[st.relative_path]:
            raise CorruptInput(f"{path}: the item of {key!r} at {st.offset}+{st.length} reaches past the file's end "
                               f"({self.sizes[st.relative_path]} bytes): truncated?")
        return path

    def _open(self, st: Storage, key: str) -> tuple[Path, Any, tuple[str, ...], dict[str, zipfile.ZipInfo], dict[str, int]]:
        """The item's file, its pickle (scanned: the object and the classes left inert), its
        zip members by name (under the archive folder) and their data offsets in the file."""
        path = self._file(st, key)
        where = f"{path} (item of {key!r} at {st.offset})"
        try:
            with files.open_regular(path) as f:
                window = _Window(f, st.offset, st.length)
                with zipfile.ZipFile(window) as zf:
                    infos = {info.filename: info for info in zf.infolist()}
                    member = pickle_member(zf.namelist(), where)
                    if infos[member].file_size > MAX_PICKLE_BYTES:
                        raise CorruptInput(f"{where}: its pickle is {infos[member].file_size} bytes, too large")
                    data = zf.read(member)
                    starts = {name: data_offset(window, info) for name, info in infos.items() if "/data/" in name}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, KeyError) as e:
            raise CorruptInput(f"{where}: not a torch.save zip ({e})") from None
        for name, start in starts.items():
            info = infos[name]
            if info.compress_type != zipfile.ZIP_STORED or start + info.file_size > st.length:
                raise CorruptInput(f"{where}: record {name} is compressed or reaches past the item's end")
        obj, records = scan_bytes(data, where)
        archive = member.rsplit("/", 1)[0]
        return path, obj, records, {n.removeprefix(archive + "/"): i for n, i in infos.items()}, \
            {n.removeprefix(archive + "/"): st.offset + s for n, s in starts.items()}

    def chunk(self, entry: Entry, chunk: Chunk) -> Tensor:
        """One chunk's bytes, a file range; CorruptInput when its item disagrees with the metadata."""
        path, stub, _, infos, starts = self._open(chunk.storage, entry.key)
        where = f"{path} (item of {entry.key!r} at {chunk.storage.offset})"
        if not isinstance(stub, TensorStub):
            raise CorruptInput(f"{where}: holds {type(stub).__name__}, not the tensor chunk the metadata says")
        if stub.dtype != entry.dtype or stub.shape != chunk.sizes:
            raise CorruptInput(f"{where}: a {stub.dtype} tensor of shape {list(stub.shape)}, but the metadata says "
                               f"{entry.dtype} {list(chunk.sizes)}")
        return _record_tensor(path, stub, infos, starts, where)

    def tensor(self, entry: Entry) -> Tensor:
        """The whole tensor of ``entry``, lazy: its chunks joined exactly."""
        return join(entry.dtype, entry.size, [(c, self.chunk(entry, c)) for c in entry.chunks])

    def value(self, entry: Entry) -> Any:
        """A bytes value: what ``torch.save`` stored, read by the scanner (tensors in it lazy).
        One naming classes beyond plain containers (an ``io.BytesIO``, a script's own class)
        is kept as its item's bytes, a 1-d U8 tensor: carried exactly, never run."""
        st = entry.chunks[0].storage
        path, obj, records, infos, starts = self._open(st, entry.key)
        where = f"{path} (item of {entry.key!r} at {st.offset})"
        if records:
            return Tensor.from_file(path, st.offset, "U8", (st.length,))

        def convert(value):
            if isinstance(value, TensorStub):
                return _record_tensor(path, value, infos, starts, where)
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return type(value)(convert(v) for v in value)
            return value

        return convert(obj)


def _record_tensor(path: Path, stub: TensorStub, infos: dict[str, zipfile.ZipInfo], starts: dict[str, int],
                   where: str) -> Tensor:
    """The tensor ``stub`` of an item as a file range: it must fill its record exactly, as
    ``dcp.save`` writes every chunk (a clone of a view, never a view of a larger storage)."""
    record = f"data/{stub.storage.key}"
    nbytes = math.prod(stub.shape) * dtypes.get(stub.dtype).itemsize
    contiguous = tuple(math.prod(stub.shape[i + 1:]) for i in range(len(stub.shape)))
    if record not in infos:
        raise CorruptInput(f"{where}: its storage record {record} is missing")
    if infos[record].file_size != nbytes or stub.offset != 0 or (nbytes and stub.stride != contiguous):
        raise CorruptInput(f"{where}: its data record is {infos[record].file_size} bytes, "
                           f"the {stub.dtype} tensor {list(stub.shape)} it holds is {nbytes}")
    return Tensor.from_file(path, starts[record], stub.dtype, stub.shape)


def join(dtype: str, size: tuple[int, ...], parts: list[tuple[Chunk, Tensor]]) -> Tensor:
    """The tensor of ``size`` that chunks tile (checked by ``metadata.check_tiling``): their
    concatenation when they split dim 0 only (FSDP2: file ranges joined lazily), else one
    buffer filled chunk by chunk when first read (dim 1, 2-D meshes, uneven)."""
    if math.prod(size) == 0:
        return Tensor.from_bytes(b"", dtype, size)
    parts = [(c, t) for c, t in parts if t.nbytes]
    if len(parts) == 1:
        return parts[0][1]
    if all(c.sizes[1:] == size[1:] for c, _ in parts):
        return Tensor.concat([t for _, t in sorted(parts, key=lambda p: p[0].offsets)], axis=0)

    def assemble():
        import numpy as np

        out = np.empty(size, dtype=dtypes.get(dtype).raw)
        for c, t in parts:
            out[tuple(slice(o, o + n) for o, n in zip(c.offsets, c.sizes))] = t.raw()
        return out

    return Tensor.from_loader(dtype, size, assemble)
