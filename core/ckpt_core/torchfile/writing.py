"""Writing a torch pickle (``torch.save``'s zip format) without torch, one tensor at a time.

``torch.save`` needs torch (seconds to import, some 200 MB) and every tensor in memory.
This writes the same file from lazy ckpt-core Tensors, and it loads with
``torch.load(weights_only=True, mmap=True)`` and with ``torchfile.load``:

- ``data.pkl`` is the pickle torch writes, opcode for opcode (empty bytes aside, see
  ``_pickle``): protocol 2, each tensor a ``torch._utils._rebuild_tensor_v2`` call over a
  persistent storage id ``('storage', torch.FloatStorage, key, 'cpu', numel)``
  (``_rebuild_tensor_v3`` with ``torch.storage.UntypedStorage`` and the dtype for the
  dtypes that have no legacy storage class: uint16/32/64 and the float8 kinds), bytes as
  ``_codecs.encode`` calls. The torch objects it names are stand-ins (``_Global``) that a
  pure-Python pickler writes as GLOBAL opcodes, so torch is never imported.
- The archive is laid out as torch's writer (miniz) lays it out: records
  ``<name>/data.pkl``, ``.format_version``, ``.storage_alignment``, ``byteorder``,
  ``data/<key>``..., ``version``, ``.data/serialization_id``, stored, each record's data
  at a multiple of 64 bytes (an ``FB`` padding field in the local header), sizes and
  CRC-32 in a data descriptor after the data, zip64 fields where a size or offset needs
  them, and always the zip64 end records. It is written by hand, not with ``zipfile``,
  because ``zipfile`` takes the CRC-32 only from bytes passed through ``write``: here a
  file range is copied in the kernel (``os.copy_file_range``) and its CRC-32 computed on
  the other core, or taken from the source archive, while the next record is written.
- Tensor bytes never sit in memory whole unless they are computed: a Tensor that is a
  range of a file is copied file to file; a computed one (a transpose, a fused q/k/v) is
  materialised one at a time and written in chunks.

Tensors that are the same object share one storage (a tie, as nanoGPT's
``wte``/``lm_head``); each place it appears is its own tensor over that storage, as in a
``state_dict`` that torch saves.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import os
import pickle
import secrets
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .. import progress
from ..errors import CorruptInput
from ..safetensors_io import copy_range, crc32, crc32_range, write_all
from ..tensor import Tensor
from .archive import ZIP_ERRORS, is_zip, stored_records
from .names import LEGACY_STORAGES, TORCH_DTYPES

if TYPE_CHECKING:
    from concurrent.futures import Future

PROTOCOL = 2  # torch.save's default
ALIGNMENT = 64  # torch aligns every record's data to this (its ``.storage_alignment``)
CHUNK_SIZE = 32 * 1024 * 1024  # bytes per write of a computed tensor



# -- the pickle ------------------------------------------------------------------------------


class _Global:
    """A stand-in for an object the pickle names (``torch.FloatStorage``, say), written
    as a GLOBAL opcode without importing its module. Get one with ``_global``."""

    def __init__(self, module: str, name: str):
        self.module = module
        self.name = name


@functools.cache
def _global(module: str, name: str) -> _Global:
    """One stand-in per name, so the pickler memoizes it and names it once, as torch's does."""
    return _Global(module, name)


class _Call:
    """``func(*args)`` in the pickle: GLOBAL func, the args tuple, REDUCE."""

    def __init__(self, func: _Global, args: tuple):
        self.func = func
        self.args = args


def call(module: str, name: str, *args) -> _Call:
    """``module.name(*args)`` in the pickle, never imported here: for files another program
    loads with its own classes (DeepSpeed's ``ZeroStageEnum(2)``). ``args`` are plain data."""
    return _Call(_global(module, name), args)


def torch_dtype(name: str) -> _Global:
    """The torch dtype of safetensors dtype ``name`` in the pickle (``torch.float16``)."""
    return _global("torch", TORCH_DTYPES[name])


class Instance:
    """An instance of the class ``module.name`` in the pickle, as pickle writes a plain
    object (NEWOBJ, then BUILD with ``state``, its attributes), never imported here: for
    files another program loads with its own classes (DeepSpeed's LossScaler). ``state``
    is a dict of plain data and Tensors."""

    def __init__(self, module: str, name: str, state: dict):
        self.module = module
        self.name = name
        self.state = state


class _Storage:
    """One storage record: the Tensor that fills it, and its key once the pickler gives it one."""

    def __init__(self, tensor: Tensor):
        self.tensor = tensor
        self.key: str | None = None


def _contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Strides of a contiguous tensor as torch computes them (a 0 size counts as 1)."""
    return tuple(math.prod(max(n, 1) for n in shape[i + 1:]) for i in range(len(shape)))


def _tensor_call(storage: _Storage) -> _Call:
    """How torch pickles a contiguous tensor over a whole storage."""
    t = storage.tensor
    shape = tuple(int(n) for n in t.shape)  # a new tuple for each tensor, as torch pickles one
    args = (storage, 0, shape, _contiguous_strides(shape), False,
            _Call(_global("collections", "OrderedDict"), ()))  # the backward hooks: none
    if t.dtype in LEGACY_STORAGES:
        return _Call(_global("torch._utils", "_rebuild_tensor_v2"), args)
    return _Call(_global("torch._utils", "_rebuild_tensor_v3"), (*args, _global("torch", TORCH_DTYPES[t.dtype])))


class _Pickler(pickle._Pickler):
    """The pure-Python pickler (the C one looks every global up by importing its module),
    taught to write ``_Global`` and ``_Call`` stand-ins, and storages as persistent ids.
    Storage keys are given in the order the pickle first names them, as torch gives them."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def __init__(self, file):
        super().__init__(file, protocol=PROTOCOL)
        self.storages: list[_Storage] = []

    def persistent_id(self, obj):
        if not isinstance(obj, _Storage):
            return None
        if obj.key is None:
            obj.key = str(len(self.storages))
            self.storages.append(obj)
        t = obj.tensor
        if t.dtype in LEGACY_STORAGES:
            return ("storage", _global("torch", LEGACY_STORAGES[t.dtype]), obj.key, "cpu", t.numel)
        return ("storage", _global("torch.storage", "UntypedStorage"), obj.key, "cpu", t.nbytes)

    def save_stand_in_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def save_call(self, obj: _Call) -> None:
        self.save(obj.func)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    def save_instance(self, obj: Instance) -> None:
        self.save(_global(obj.module, obj.name))
        self.save(())
        self.write(pickle.NEWOBJ)
        self.memoize(obj)
        self.save(obj.state)
        self.write(pickle.BUILD)

    dispatch[_Global] = save_stand_in_global
    dispatch[_Call] = save_call
    dispatch[Instance] = save_instance


def _pickle(obj: Any) -> tuple[bytes, list[_Storage]]:
    """``data.pkl`` for ``obj`` and the storages it names, in key order."""
    storages: dict[int, _Storage] = {}

    def swap(value):
        if isinstance(value, Tensor):
            return _tensor_call(storages.setdefault(id(value), _Storage(value)))
        if isinstance(value, (bytes, bytearray)):
            # as torch spells bytes; empty ones too, which torch (as plain pickle) writes as
            # builtins.bytes(), a call ckpt-core's own reader refuses
            return _Call(_global("_codecs", "encode"), (bytes(value).decode("latin1"), "latin1"))
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, Instance):
            return Instance(value.module, value.name, swap(value.state))
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        return value

    swapped = swap(obj)  # held until pickled: the memo goes by id
    buffer = io.BytesIO()
    pickler = _Pickler(buffer)
    pickler.dump(swapped)
    return buffer.getvalue(), pickler.storages


def dumps(obj: Any) -> bytes:
    """A bare pickle (torch's protocol) of plain data and stand-ins (``Instance``, ``call``,
    ``torch_dtype``), no tensors: a file another program unpickles with its own classes,
    as ``torch.distributed.checkpoint``'s ``.metadata``."""
    data, storages = _pickle(obj)
    if storages:
        raise ValueError("dumps writes no tensors; save them with save()")
    return data


# -- the zip archive -------------------------------------------------------------------------

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header (30 bytes)
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory entry (46 bytes)
_ZIP64_END = struct.Struct("<4sQHHIIQQQQ")
_ZIP64_LOCATOR = struct.Struct("<4sIQI")
_END = struct.Struct("<4sHHHHIIH")
# Versions "made by" and "needed" are 0 in every header, as miniz writes them; only the
# zip64 end record names a version.
_UTF8 = 0x0800  # the name is UTF-8
_DESCRIBED = 0x0008  # sizes and CRC-32 are in a data descriptor after the data (not for an empty record)
_ZIP64_VERSION = 45
_NOT_HERE = 0xFFFFFFFF  # the value of a 4-byte field whose value is in the zip64 field
# A size or offset this large goes into a zip64 field (the largest 4-byte value means
# "see the zip64 field", so it counts too). Lowering it gives small files zip64 fields,
# which is how the tests check them without writing 4 GB.
ZIP64_FROM = 0xFFFFFFFF


class _Record:
    """One stored record: its name, where its local header starts, its size, its local
    header, where its data starts, and its CRC-32 (or the Future computing it)."""

    def __init__(self, name: bytes, offset: int, size: int):
        self.name = name
        self.offset = offset
        self.size = size
        self.zip64 = size >= ZIP64_FROM or offset >= ZIP64_FROM
        self.flags = _UTF8 | (_DESCRIBED if size else 0)
        self.header = self._local_header()
        self.data_offset = offset + len(self.header)
        self.crc: int | Future = 0

    def _local_header(self) -> bytes:
        """The local header, its zip64 field (miniz's: sizes when large, offset when far)
        and the padding that puts the data at a multiple of ``ALIGNMENT``."""
        extra = self._zip64_field(compressed_size=0)
        start = self.offset + _LOCAL.size + len(self.name) + len(extra) + 4
        pad = -start % ALIGNMENT
        extra += b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return _LOCAL.pack(b"PK\x03\x04", 0, self.flags, 0, 0, 0, 0, 0, 0,
                           len(self.name), len(extra)) + self.name + extra

    def _zip64_field(self, compressed_size: int) -> bytes:
        """The zip64 extra field: the sizes if they need it, then the offset if it does
        (none if neither). miniz gives the compressed size as 0 in the local header."""
        values = [self.size, compressed_size] if self.size >= ZIP64_FROM else []
        values += [self.offset] if self.offset >= ZIP64_FROM else []
        return struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""

    def descriptor(self, crc: int) -> bytes:
        """The data descriptor (none for an empty record, whose header says it all)."""
        if not self.size:
            return b""
        if self.zip64:
            return struct.pack("<4sIQQ", b"PK\x07\x08", crc, self.size, self.size)
        return struct.pack("<4sIII", b"PK\x07\x08", crc, self.size, self.size)

    def central_entry(self, crc: int) -> bytes:
        extra = self._zip64_field(compressed_size=self.size)
        size = _NOT_HERE if self.size >= ZIP64_FROM else self.size
        offset = _NOT_HERE if self.offset >= ZIP64_FROM else self.offset
        return _CENTRAL.pack(b"PK\x01\x02", 0, 0, self.flags, 0, 0, 0, crc, size, size,
                             len(self.name), len(extra), 0, 0, 0, 0, offset) + self.name + extra


def _archive_name(path: Path) -> str:
    """The folder name torch gives the records: the file name up to its last dot, or
    ``archive`` when that leaves nothing or something that is not plain ASCII."""
    name = Path(path).name
    stem = name[:name.rfind(".")] if "." in name else name
    return stem if stem and stem.isascii() and stem.isprintable() else "archive"


def _end_records(records: list[_Record], start: int, end: int) -> bytes:
    """The zip64 end record, its locator and the end record (torch writes all three)."""
    count, size = len(records), end - start
    return (_ZIP64_END.pack(b"PK\x06\x06", _ZIP64_END.size - 12, 0x031E, _ZIP64_VERSION, 0, 0, count, count, size, start)
            + _ZIP64_LOCATOR.pack(b"PK\x06\x07", 0, end, 1)
            + _END.pack(b"PK\x05\x06", 0, 0, min(count, 0xFFFF), min(count, 0xFFFF),
                        _NOT_HERE if size >= ZIP64_FROM else size, _NOT_HERE if start >= ZIP64_FROM else start, 0))


# -- tensor bytes ----------------------------------------------------------------------------


def _stored_crcs(path: Path) -> dict[tuple[int, int], int]:
    """``(data offset, size) -> CRC-32`` of each storage record of the torch zip file at
    ``path``; empty for a file that is not one."""
    try:
        if not is_zip(path):
            return {}
        return {(offset, info.file_size): info.CRC for offset, info in stored_records(path).items()}
    except (*ZIP_ERRORS, CorruptInput):
        return {}


# -- save ------------------------------------------------------------------------------------


def save(obj: Any, path: Path, into=None) -> None:
    """Write ``obj`` (plain data, with ckpt-core Tensors anywhere inside) as a torch pickle
    at ``path``, replacing any file there. Tensors come back from ``torch.load`` as torch
    tensors, byte for byte. The caller makes the write atomic and durable (``atomic.py``).
    ``into``: an open unbuffered file to append the archive to instead, at its position
    (``path`` then only names the archive's folder), as the items of a DCP ``.distcp``
    file follow one another.

    Each record's CRC-32 is computed on a worker thread while the next record is written,
    and patched into its data descriptor at the end; a file range that is a whole stored
    record of a zip archive (an unchanged tensor of a torch source file) takes the CRC-32
    that archive records for the same bytes: a damaged source stays detectable in the copy
    instead of getting a fresh checksum over damaged bytes. One computed tensor is in
    memory at a time: the next is made once the previous one is written and checksummed.
    """
    data, storages = _pickle(obj)
    archive = _archive_name(path).encode("ascii")
    small = [(b"data.pkl", data), (b".format_version", b"1"), (b".storage_alignment", str(ALIGNMENT).encode()),
             (b"byteorder", b"little")]
    tail = [(b"version", b"3\n"), (b".data/serialization_id", f"{secrets.randbits(128):040d}".encode())]
    records: list[_Record] = []
    position = 0

    from concurrent.futures import Future, ThreadPoolExecutor  # here: importing it costs start-up

    known_crcs: dict[Path, dict[tuple[int, int], int]] = {}  # each source archive's, read once
    with (contextlib.nullcontext(into) if into is not None else open(path, "wb", buffering=0)) as out, \
            ThreadPoolExecutor(max_workers=1) as pool:
        base = out.tell()
        last_computed: Future | None = None

        def begin(name: bytes, size: int) -> _Record:
            record = _Record(archive + b"/" + name, position, size)
            write_all(out, record.header)
            records.append(record)
            return record

        def end(record: _Record) -> None:
            nonlocal position
            crc = record.crc if isinstance(record.crc, int) else 0  # patched once computed
            write_all(out, record.descriptor(crc))
            position = record.data_offset + record.size + len(record.descriptor(0))

        def write_computed(t: Tensor) -> Future:
            """Make ``t``'s bytes and write them; the worker computing their CRC-32 holds
            the only reference to them once this returns."""
            flat = memoryview(t.raw().reshape(-1).view("u1"))
            for start in range(0, len(flat), CHUNK_SIZE):
                piece = flat[start:start + CHUNK_SIZE]
                write_all(out, piece)
                progress.advance(len(piece))
            return pool.submit(crc32, flat)

        def write_small(name: bytes, content: bytes) -> None:
            record = begin(name, len(content))
            write_all(out, content)
            record.crc = crc32(content)
            end(record)

        for name, content in small:
            write_small(name, content)
        for storage in storages:
            t = storage.tensor
            record = begin(b"data/" + storage.key.encode(), t.nbytes)
            if t.file_range is not None and t.nbytes:
                rng = t.file_range
                if rng.path not in known_crcs:
                    known_crcs[rng.path] = _stored_crcs(rng.path)
                known = known_crcs[rng.path].get((rng.offset, rng.nbytes))
                copy_range(rng, out)
                record.crc = known if known is not None else pool.submit(crc32_range, rng)
            elif t.nbytes:
                if last_computed is not None:
                    last_computed.result()  # the previous computed tensor is checksummed and freed
                record.crc = last_computed = write_computed(t)
            end(record)
        for name, content in tail:
            write_small(name, content)

        for record in records:
            if isinstance(record.crc, Future):
                record.crc = record.crc.result()
                os.pwrite(out.fileno(), record.descriptor(record.crc), base + record.data_offset + record.size)
        central = b"".join(record.central_entry(record.crc) for record in records)
        write_all(out, central + _end_records(records, position, position + len(central)))
