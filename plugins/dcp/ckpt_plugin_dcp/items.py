"""The items of ``.distcp`` files: each a complete, uncompressed ``torch.save`` zip at a
known range of its file, read in place without torch.

Each item is read by the core's torch archive reader over its byte range
(``torchfile.scan(path, span)``: every local header checked against the central directory,
the pickle inflated within bounds and unpickled by the allow-list scanner), and checked
against the metadata (dtype, shape). A chunk's bytes are then its record's file range. A
tensor of several chunks is their concatenation when they split dim 0 only (FSDP2's
sharding: a lazy concat of file ranges), else one buffer filled chunk by chunk when first
read.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ckpt_core import CorruptInput, NotFound, Tensor, dtypes
from ckpt_core.torchfile import Scan, TensorStub, lazy, scan, stub_tensor

from .metadata import Chunk, Entry, Storage


class Items:
    """Reads the items of one checkpoint directory, each file's size checked once."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.sizes: dict[str, int] = {}

    def _scan(self, st: Storage, key: str) -> tuple[Path, Scan]:
        """The item's file and its scanned archive (the object, tensors as stubs)."""
        path = self.directory / st.relative_path
        if st.relative_path not in self.sizes:
            if path.is_symlink() or not path.is_file():
                raise NotFound(f"{path}: missing (the checkpoint's metadata stores {key!r} there)")
            self.sizes[st.relative_path] = path.stat().st_size
        if st.offset + st.length > self.sizes[st.relative_path]:
            raise CorruptInput(f"{path}: the item of {key!r} at {st.offset}+{st.length} reaches past the file's end "
                               f"({self.sizes[st.relative_path]} bytes): truncated?")
        return path, scan(path, (st.offset, st.length))

    def chunk(self, entry: Entry, chunk: Chunk) -> Tensor:
        """One chunk's bytes, a file range; CorruptInput when its item disagrees with the metadata."""
        path, found = self._scan(chunk.storage, entry.key)
        stub = found.obj
        where = f"{path} (item of {entry.key!r} at {chunk.storage.offset})"
        if not isinstance(stub, TensorStub):
            raise CorruptInput(f"{where}: holds {type(stub).__name__}, not the tensor chunk the metadata says")
        if stub.dtype != entry.dtype or stub.shape != chunk.sizes:
            raise CorruptInput(f"{where}: a {stub.dtype} tensor of shape {list(stub.shape)}, but the metadata says "
                               f"{entry.dtype} {list(chunk.sizes)}")
        return stub_tensor(path, found.archive, stub, found.members)

    def tensor(self, entry: Entry) -> Tensor:
        """The whole tensor of ``entry``, lazy: its chunks joined exactly."""
        return join(entry.dtype, entry.size, [(c, self.chunk(entry, c)) for c in entry.chunks])

    def value(self, entry: Entry) -> Any:
        """A bytes value: what ``torch.save`` stored, read by the scanner (tensors in it lazy).
        One naming classes beyond plain containers (an ``io.BytesIO``, a script's own class)
        is kept as its item's bytes, a 1-d U8 tensor: carried exactly, never run."""
        st = entry.chunks[0].storage
        path, found = self._scan(st, entry.key)
        if found.records:
            return Tensor.from_file(path, st.offset, "U8", (st.length,))
        return lazy(path, found)


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
