"""Lazy tensors: a dtype, a shape and a way to get the bytes, read only when asked.

A Tensor never holds data of its own. It is backed by a file range (what a safetensors
reader returns), a buffer, or a loader function (a plugin's mmap-ed torch storage), and
layout changes (transpose, reshape, slice, stack, concat) return new lazy Tensors that act
on raw same-width integer words, so bf16 and fp8 bytes move exactly.

Writers stream a tensor with ``iter_chunks``; a tensor that is an untouched file range
keeps its ``file_range`` so a writer can copy it file to file without reading it into
Python at all.

numpy is imported where bytes are read or computed, never to describe a tensor: listing
and inspecting checkpoints does not load it.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import attrs

from . import dtypes
from .errors import BaseMissing, CorruptInput

if TYPE_CHECKING:
    import numpy as np

# 8 MiB: large enough that per-call costs vanish, small enough that malloc reuses a freed
# read buffer instead of mmap-ing (and page-faulting in) a fresh one for every chunk, which
# made 64 MiB reads of a cached file run at a third of the speed.
CHUNK_SIZE = 8 * 1024 * 1024


class FileRange(NamedTuple):
    """``nbytes`` bytes of ``path`` starting at ``offset``: a tensor's bytes on disk (a
    tuple: a file can hold a million of them)."""

    path: Path
    offset: int
    nbytes: int


def _read_range(rng: FileRange, count: int) -> np.ndarray:
    import numpy as np

    with open(rng.path, "rb") as f:
        f.seek(rng.offset)
        data = f.read(count)
    if len(data) != count:
        raise CorruptInput(f"{rng.path}: file ends inside a tensor's data (truncated?)")
    return np.frombuffer(data, dtype=np.uint8)


@attrs.frozen(eq=False, repr=False)
class Tensor:
    """A lazy tensor. Build one with the ``from_*`` constructors, not directly."""

    dtype: str
    shape: tuple[int, ...] = attrs.field(converter=tuple)
    # None: the bytes are ``file_range``, read when asked
    _load: Callable[[], np.ndarray | bytes | memoryview] | None = attrs.field(alias="load")
    file_range: FileRange | None = None
    # the tensors whose bytes, one after the other, are this one's (a concatenation along
    # the outermost axis: a ZeRO parameter that straddles two ranks' files), streamed in turn
    parts: tuple[Tensor, ...] = ()
    # True: the bytes are not in this checkpoint at all (the base weight of adapters
    # converted without their base); anything that reads them raises BaseMissing
    is_absent: bool = False

    def __attrs_post_init__(self):
        if self.dtype not in dtypes.DTYPES:
            raise ValueError(f"unknown dtype {self.dtype!r}")
        if any((not isinstance(n, numbers.Integral)) or n < 0 for n in self.shape):
            raise ValueError(f"bad shape {self.shape!r}")
        if self._load is None and self.file_range is None:
            raise ValueError("a tensor needs a loader or a file range")

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_file(cls, path: Path | str, offset: int, dtype: str, shape: Sequence[int]) -> Tensor:
        """The tensor stored at ``offset`` of ``path`` (read only when asked)."""
        nbytes = math.prod(shape) * dtypes.get(dtype).itemsize
        return cls(dtype, shape, load=None, file_range=FileRange(path if isinstance(path, Path) else Path(path), offset, nbytes))

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview, dtype: str, shape: Sequence[int]) -> Tensor:
        """A tensor over raw little-endian bytes already in memory."""
        return cls(dtype, shape, load=lambda: data)

    @classmethod
    def from_numpy(cls, array: np.ndarray, dtype: str | None = None) -> Tensor:
        """A tensor over a numpy array. ``dtype`` names the words when numpy has no such
        dtype (pass raw uint16 words with ``dtype="BF16"``, uint8 with ``"F8_E4M3"``)."""
        import numpy as np

        array = np.asarray(array)
        name = dtype or dtypes.from_numpy(array.dtype)
        if array.dtype.itemsize != dtypes.get(name).itemsize:
            raise ValueError(f"{array.dtype} words cannot hold {name}")
        data = np.ascontiguousarray(array).view(dtypes.get(name).raw)
        return cls(name, array.shape, load=lambda: data)

    @classmethod
    def from_loader(cls, dtype: str, shape: Sequence[int], loader: Callable[[], np.ndarray | bytes]) -> Tensor:
        """A tensor whose bytes ``loader()`` returns when first needed (for example an
        mmap-ed torch storage). Any array or buffer of the right byte count will do."""
        return cls(dtype, shape, load=loader)

    @classmethod
    def absent(cls, dtype: str, shape: Sequence[int]) -> Tensor:
        """A tensor known by dtype and shape only: the base weight an adapter file names
        but does not hold. It converts wherever no bytes are needed (adapters alone);
        reading it raises BaseMissing."""
        return cls(dtype, shape, load=_base_missing, is_absent=True)

    # -- facts ---------------------------------------------------------------------

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The bytes of its data (an absent tensor's too: what its base would take)."""
        return self.numel * dtypes.get(self.dtype).itemsize

    def __repr__(self) -> str:
        where = f" @ {self.file_range.path.name}+{self.file_range.offset}" if self.file_range else ""
        where = " absent" if self.is_absent else where
        return f"Tensor({self.dtype}, {list(self.shape)}{where})"

    # -- materialising -------------------------------------------------------------

    def raw(self) -> np.ndarray:
        """The data as unsigned words of the dtype's width, shaped. Reads the bytes.

        A shape numpy cannot hold (more than 64 dimensions, or an empty tensor with a
        dimension of 2**63) stays flat: comparing, casting and writing work on words alone.
        """
        import numpy as np

        data = _read_range(self.file_range, self.file_range.nbytes) if self._load is None else self._load()
        if isinstance(data, np.ndarray):
            data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
        else:
            data = np.frombuffer(data, dtype=np.uint8)
        if data.size != self.nbytes:
            raise CorruptInput(f"tensor data is {data.size} bytes, expected {self.nbytes} for {self!r}")
        words = data.view(dtypes.get(self.dtype).raw)
        try:
            return words.reshape(self.shape)
        except ValueError:  # the size is right (checked above), so only the shape is beyond numpy
            return words

    def numpy(self) -> np.ndarray:
        """The data as a numpy array of its real dtype (BF16 and FP8 have none: use raw)."""
        np_dtype = dtypes.get(self.dtype).numpy
        if np_dtype is None:
            raise TypeError(f"numpy has no {self.dtype}; use .raw() or torchfile.to_torch")
        return self.raw().view(np_dtype)

    def to_float32(self) -> np.ndarray:
        """Values as float32, for explicit arithmetic only."""
        return dtypes.to_float32(self.raw(), self.dtype)

    def to_mlx(self):
        """The data as an mlx array (imports mlx; FP8 comes back as uint8, F64 is refused)."""
        import mlx.core as mx

        if self.dtype == "F64":
            raise TypeError("MLX cannot hold float64")
        raw = self.raw()
        if self.dtype == "BF16":
            return mx.array(raw).view(mx.bfloat16)
        if self.dtype in ("F8_E4M3", "F8_E5M2"):
            return mx.array(raw)
        return mx.array(raw.view(dtypes.get(self.dtype).numpy))

    def tobytes(self) -> bytes:
        return self.raw().tobytes()

    def file_ranges(self) -> list[FileRange] | None:
        """The file ranges whose bytes, one after the other, are this tensor's (one for a
        file range, one per part of a concatenation of them), for a writer to copy in the
        kernel; None if any byte is computed."""
        if self.parts:
            found = [part.file_ranges() for part in self.parts]
            return None if any(r is None for r in found) else [r for ranges in found for r in ranges]
        return [self.file_range] if self.file_range is not None else None

    def iter_chunks(self, chunk_size: int = CHUNK_SIZE) -> Iterator[memoryview]:
        """The bytes in order, at most ``chunk_size`` at a time. A file range is read
        piece by piece, a concatenation part by part; anything else is materialised once
        and sliced."""
        if self.parts:
            for part in self.parts:
                yield from part.iter_chunks(chunk_size)
            return
        if self.file_range is not None:
            rng = self.file_range
            with open(rng.path, "rb") as f:
                f.seek(rng.offset)
                left = rng.nbytes
                while left:
                    piece = f.read(min(chunk_size, left))
                    if not piece:
                        raise CorruptInput(f"{rng.path}: file ends inside a tensor's data (truncated?)")
                    left -= len(piece)
                    yield memoryview(piece)
            return
        flat = memoryview(self.raw().reshape(-1).view("u1"))
        for start in range(0, len(flat), chunk_size):
            yield flat[start:start + chunk_size]

    # -- exact layout changes (lazy) ----------------------------------------------------

    def _derive(self, shape: Sequence[int], op: Callable[[np.ndarray], np.ndarray], dtype: str | None = None) -> Tensor:
        if self.is_absent:
            return Tensor.absent(dtype or self.dtype, shape)
        return Tensor(dtype or self.dtype, shape, load=lambda: op(self.raw()))

    def transpose(self, *axes: int) -> Tensor:
        """Axes permuted (reversed when none are given), as ``numpy.transpose``."""
        import numpy as np

        axes = axes or tuple(reversed(range(len(self.shape))))
        shape = tuple(self.shape[a] for a in axes)
        return self._derive(shape, lambda a: np.ascontiguousarray(a.transpose(axes)))

    @property
    def T(self) -> Tensor:
        return self.transpose()

    def reshape(self, *shape: int) -> Tensor:
        """Same bytes in another shape (``-1`` infers one dimension)."""
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = _infer_shape(self.shape, tuple(int(n) for n in shape))
        if shape == self.shape:
            return self
        return Tensor(self.dtype, shape, load=lambda: self.raw().reshape(shape), file_range=self.file_range,
                      parts=self.parts, is_absent=self.is_absent)

    def slice(self, axis: int, start: int, stop: int) -> Tensor:
        """Indices ``start:stop`` along ``axis``."""
        axis = axis % len(self.shape)
        if not 0 <= start <= stop <= self.shape[axis]:
            raise ValueError(f"slice {start}:{stop} out of range for axis {axis} of {list(self.shape)}")
        shape = self.shape[:axis] + (stop - start,) + self.shape[axis + 1:]
        if self.file_range is not None and math.prod(self.shape[:axis]) == 1:
            # one contiguous piece of the file: stays a file range (copied kernel-side, never read whole)
            row = math.prod(self.shape[axis + 1:]) * dtypes.get(self.dtype).itemsize
            return Tensor.from_file(self.file_range.path, self.file_range.offset + start * row, self.dtype, shape)
        import numpy as np

        index = (slice(None),) * axis + (slice(start, stop),)
        return self._derive(shape, lambda a: np.ascontiguousarray(a[index]))

    def split(self, axis: int, sizes: Sequence[int]) -> list[Tensor]:
        """Consecutive pieces of the given sizes along ``axis`` (they must add up)."""
        if sum(sizes) != self.shape[axis]:
            raise ValueError(f"sizes {list(sizes)} do not add up to {self.shape[axis]}")
        starts = list(itertools.accumulate(sizes, initial=0))
        return [self.slice(axis, int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]

    def reinterpret(self, dtype: str) -> Tensor:
        """The same bytes read as another dtype of the same width (fp8 as U8, say)."""
        if dtypes.get(dtype).itemsize != dtypes.get(self.dtype).itemsize:
            raise ValueError(f"cannot reinterpret {self.dtype} as {dtype}: widths differ")
        return Tensor(dtype, self.shape, load=self._load, file_range=self.file_range, is_absent=self.is_absent)

    @staticmethod
    def stack(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
        """Tensors of one dtype and shape joined along a new axis."""
        first = _same_dtype(tensors)
        if any(t.shape != first.shape for t in tensors):
            raise ValueError("stack needs tensors of one shape")
        axis = axis % (len(first.shape) + 1)
        shape = first.shape[:axis] + (len(tensors),) + first.shape[axis:]
        if any(t.is_absent for t in tensors):
            return Tensor.absent(first.dtype, shape)
        if math.prod(shape[:axis]) == 1:
            joined = _adjacent_range(tensors, first.dtype, shape)
            if joined is not None:
                return joined

        def load():
            import numpy as np  # (when the bytes are read: a stack made only to be copied never imports numpy)

            return np.stack([t.raw() for t in tensors], axis=axis)

        return Tensor(first.dtype, shape, load=load)

    @staticmethod
    def concat(tensors: Sequence[Tensor], axis: int = 0) -> Tensor:
        """Tensors of one dtype joined along an existing axis."""
        first = _same_dtype(tensors)
        axis = axis % len(first.shape)
        rest = [t.shape[:axis] + t.shape[axis + 1:] for t in tensors]
        if any(r != rest[0] for r in rest):
            raise ValueError("concat needs tensors that agree off the joined axis")
        shape = first.shape[:axis] + (sum(t.shape[axis] for t in tensors),) + first.shape[axis + 1:]
        if any(t.is_absent for t in tensors):
            return Tensor.absent(first.dtype, shape)
        outermost = math.prod(shape[:axis]) == 1
        if outermost:
            joined = _adjacent_range(tensors, first.dtype, shape)
            if joined is not None:
                return joined

        def load():
            import numpy as np  # (when the bytes are read: parts copied in the kernel never import numpy)

            return np.concatenate([t.raw() for t in tensors], axis=axis)

        return Tensor(first.dtype, shape, load=load, parts=tuple(tensors) if outermost else ())


def _base_missing():
    raise BaseMissing("the base weights are not in this checkpoint (adapters alone); give the base model with "
                      "--option base=PATH")


def _adjacent_range(tensors: Sequence[Tensor], dtype: str, shape: tuple[int, ...]) -> Tensor | None:
    """The file range that ``tensors`` fill end to end (one file, in order), as one Tensor of
    ``shape``; None if they are not such ranges. Joining along the outermost axis is then
    just the wider range: a split fused tensor (q, k, v of ``c_attn``) re-fuses without a read."""
    ranges = [t.file_range for t in tensors]
    if any(r is None for r in ranges):
        return None
    for a, b in zip(ranges, ranges[1:]):
        if b.path != a.path or b.offset != a.offset + a.nbytes:
            return None
    return Tensor.from_file(ranges[0].path, ranges[0].offset, dtype, shape)


def _same_dtype(tensors: Sequence[Tensor]) -> Tensor:
    if not tensors:
        raise ValueError("need at least one tensor")
    if len({t.dtype for t in tensors}) != 1:
        raise ValueError("tensors of different dtypes cannot be joined")
    return tensors[0]


def _infer_shape(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    numel = math.prod(old)
    if new.count(-1) == 1:
        known = math.prod(n for n in new if n != -1)
        if known == 0 or numel % known:
            raise ValueError(f"cannot reshape {list(old)} to {list(new)}")
        new = tuple(numel // known if n == -1 else n for n in new)
    if any(n < 0 for n in new) or math.prod(new) != numel:
        raise ValueError(f"cannot reshape {list(old)} to {list(new)}")
    return new


def same_bytes(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bytes (bit for bit)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_absent or b.is_absent:
        return a.is_absent and b.is_absent
    import numpy as np

    return a is b or np.array_equal(a.raw().reshape(-1).view(np.uint8), b.raw().reshape(-1).view(np.uint8))
