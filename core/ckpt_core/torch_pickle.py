"""Reading a torch zip pickle without torch, without tensor data, running nothing.

``scan`` unpickles only the archive's ``data.pkl`` with an allow-list unpickler: tensors
become ``TensorStub`` records (dtype, shape, storage key: no data is read), and a class the
file names that is not a plain container becomes an inert ``Record`` (its name and the
arguments it was given), so a script-defined dataclass never runs. ``lazy`` turns a scan
with no records into what ``torch.load`` would give, tensors as lazy file ranges, and
``load`` is what readers call: the scanner for plain checkpoints (no torch import, which
costs seconds and some 200 MB), ``torch_io.load_pickle`` for the rest. ``stub_tensor``
reads one stub, for a file whose other parts ``weights_only`` refuses. Written by hand
because no library reads torch's format without torch; it allows less than
``weights_only`` does, never more.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import math
import pickle
import pickletools
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import numpy as np

from . import dtypes
from .errors import CorruptInput
from .tensor import Tensor
from .torch_io import TORCH_DTYPES, data_offset, is_zip, load_pickle, tree_from_torch

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # data.pkl holds structure, not weights

# torch's legacy storage class names -> safetensors dtype names
_STORAGES = {
    "BoolStorage": "BOOL", "ByteStorage": "U8", "CharStorage": "I8", "ShortStorage": "I16", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "IntStorage": "I32", "FloatStorage": "F32", "LongStorage": "I64",
    "DoubleStorage": "F64", "ComplexFloatStorage": "C64", "UntypedStorage": "U8",
}
_TORCH_DTYPES = {attr: name for name, attr in TORCH_DTYPES.items()}


@attrs.frozen
class StorageStub:
    key: str
    dtype: str
    numel: int


@attrs.frozen
class TensorStub:
    """A tensor named in a pickle: where its bytes are, never the bytes."""

    storage: StorageStub
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


class Record:
    """An instance of a class the pickle names and this reader does not run (inert)."""

    qualname = "?"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.args = args
        self.state = None
        return self

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"<{self.qualname}>"


def _encode(text, encoding):
    """How protocol-2 pickles spell bytes: ``_codecs.encode(str, "latin1")`` (text codecs only)."""
    if not isinstance(text, str) or codecs.lookup(encoding).name not in ("latin-1", "iso8859-1", "utf-8"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return codecs.encode(text, encoding)


def _rebuild_tensor(storage, offset, shape, stride, *rest):
    shape, stride = tuple(shape), tuple(stride)
    if not (isinstance(storage, StorageStub) and _naturals((offset, *shape, *stride)) and len(stride) == len(shape)):
        raise pickle.UnpicklingError(f"not a tensor: storage {storage!r}, offset {offset!r}, shape {shape}, stride {stride}")
    dtype = storage.dtype
    if rest and isinstance(rest[-1], _DType):  # _rebuild_tensor_v3 names the dtype
        dtype = rest[-1].name
    return TensorStub(storage, offset, shape, stride, dtype)


def _naturals(values) -> bool:
    """Whether every value is a non-negative int (what shapes, strides and offsets are)."""
    return all(type(v) is int and v >= 0 for v in values)


@attrs.frozen
class _DType:
    name: str


def _newobj(cls, *args):
    if not (isinstance(cls, type) and issubclass(cls, Record)):
        raise pickle.UnpicklingError(f"refusing to build {cls!r}")
    return cls.__new__(cls, *args)


def _reconstructor(cls, base, state):
    return _newobj(cls)


_SAFE = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, *rest: data,
    ("torch._utils", "_rebuild_parameter_with_state"): lambda data, *rest: data,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): lambda text, encoding="utf-8": _encode(text, encoding),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch", "Size"): tuple,
    ("copyreg", "__newobj__"): _newobj,
    ("copyreg", "_reconstructor"): _reconstructor,
}


def python3_name(module: str, name: str) -> tuple[str, str]:
    """What Python 3 imports for a global a protocol-2 pickle names the Python 2 way
    (``__builtin__.set``, ``commands.Popen``: ``fix_imports``, which this unpickler's own
    ``find_class`` bypasses). No Python 2 module name is a Python 3 module, so the mapping
    never changes a Python 3 name."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _plain_global(module: str, name: str) -> Any:
    """What the scanner reads the global ``module.name`` (Python 3 names) as: a container, a
    tensor rebuild, a storage type or a dtype; None for anything else (left an inert Record)."""
    if (module, name) in _SAFE:
        return _SAFE[module, name]
    if module in ("torch", "torch.storage") and name in _STORAGES:
        return _STORAGES[name]
    if module == "torch" and name in _TORCH_DTYPES:
        return _DType(_TORCH_DTYPES[name])
    return None


def is_plain(qualname: str) -> bool:
    """Whether the scanner reads the global ``module.name`` as data rather than a Record."""
    module, _, name = qualname.rpartition(".")
    return _plain_global(module, name) is not None


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes):
        super().__init__(io.BytesIO(data))
        self.records: dict[str, type] = {}

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        plain = _plain_global(module, name)
        if plain is not None:
            return plain
        qualname = f"{module}.{name}"
        if qualname not in self.records:
            self.records[qualname] = type(name, (Record,), {"qualname": qualname})
        return self.records[qualname]

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if dtype not in dtypes.DTYPES:
            raise pickle.UnpicklingError(f"unknown storage type {dtype!r}")
        return StorageStub(str(key), dtype, int(numel))


@attrs.frozen
class Scan:
    """A torch zip pickle's structure: the unpickled object (stubs for tensors), the names
    of classes it needed that were left inert, and the archive's folder name."""

    obj: Any
    records: tuple[str, ...]
    archive: str


def pickle_member(zf: zipfile.ZipFile) -> str:
    """The ``<archive>/data.pkl`` member name; CorruptInput if there is none."""
    names = [n for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1] or \
            [n for n in zf.namelist() if n == "data.pkl"]
    if len(names) != 1:
        raise CorruptInput(f"{zf.filename}: not a torch zip pickle (no single data.pkl)")
    return names[0]


def scan(path: Path) -> Scan:
    """Unpickle ``path``'s ``data.pkl`` inertly. CorruptInput if it is not a readable torch zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            member = pickle_member(zf)
            if zf.getinfo(member).file_size > MAX_PICKLE_BYTES:
                raise CorruptInput(f"{path}: data.pkl is {zf.getinfo(member).file_size} bytes, too large to be a checkpoint's structure")
            data = zf.read(member)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:  # an unknown zip version
        raise CorruptInput(f"{path}: not a readable torch zip pickle ({e})") from None
    obj, records = scan_bytes(data, f"{path}: data.pkl")
    return Scan(obj, records, member.rsplit("/", 1)[0])


def scan_bytes(data: bytes, where: str) -> tuple[Any, tuple[str, ...]]:
    """Unpickle the bare pickle ``data`` inertly, as ``scan`` does a zip's ``data.pkl``: the
    object, and the names of the classes left inert Records. CorruptInput naming ``where``
    if the pickle is damaged."""
    unpickler = _Unpickler(data)
    try:
        obj = unpickler.load()
    except Exception as e:  # any malformed pickle: the file is damaged, nothing ran
        raise CorruptInput(f"{where}: damaged pickle ({type(e).__name__}: {e})") from None
    return obj, tuple(sorted(unpickler.records))


def named_globals(path: Path) -> list[str]:
    """Every global the pickles of a torch file name (``module.name``, as Python 3 would
    import it), in order: read off the opcodes, nothing is unpickled. Reads ``data.pkl`` of
    a zip, else the leading pickles of the file (a legacy torch file's magic number,
    protocol, system info and data; a bare pickle). Damage ends the listing, not the call."""
    try:
        if is_zip(path):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(pickle_member(zf))
        else:
            with open(path, "rb") as f:
                data = f.read(MAX_PICKLE_BYTES)
    except (CorruptInput, zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return []
    names: dict[str, None] = {}
    stream = io.BytesIO(data)
    for _ in range(4):  # a legacy file's four pickles (its storage bytes follow them)
        pushed: list[str | None] = []  # what the last ops pushed: STACK_GLOBAL takes two strings
        memo: dict[int, str | None] = {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name == "GLOBAL":
                    module, _, name = arg.partition(" ")
                    names[".".join(python3_name(module, name))] = None
                elif op.name == "STACK_GLOBAL":
                    if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                        names[".".join(python3_name(pushed[-2], pushed[-1]))] = None
                    pushed.append(None)
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                    memo[len(memo) if op.name == "MEMOIZE" else arg] = pushed[-1] if pushed else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    pushed.append(memo.get(arg))
                elif op.name not in ("PROTO", "FRAME"):
                    pushed.append(arg if isinstance(arg, str) and "UNICODE" in op.name else None)
        except ValueError:  # damaged, or not a pickle: what was named so far is known
            break
        if stream.tell() >= len(data):
            break
    return list(names)


def load(path: Path | str, allowed_globals: Sequence[Any] = ()) -> Any:
    """A torch file's data as a ckpt-core tree, tensors lazy, nothing run.

    Read by the scanner when the pickle names only tensors and plain containers (no torch
    import); otherwise by ``torch_io.load_pickle`` (weights only, ``allowed_globals``
    more), which refuses what needs code. Either way OrderedDicts come back as dicts and
    tensors as ``Tensor``s.
    """
    path = Path(path)
    if path.is_file() and is_zip(path):
        try:
            found = scan(path)
        except CorruptInput:
            found = None  # torch.load says what is wrong
        if found is not None and not found.records:
            return lazy(path, found)
    return tree_from_torch(load_pickle(path, allowed_globals=allowed_globals))


def lazy(path: Path, scan: Scan) -> Any:
    """``scan.obj`` with every tensor stub a lazy Tensor over the archive's bytes: what
    ``torch.load`` would give, without torch. Stubs over the same bytes share one Tensor
    (a tie, as torch shares the storage); OrderedDicts become plain dicts."""
    with zipfile.ZipFile(path) as zf:
        infos = {info.filename: info for info in zf.infolist()}
    made: dict[TensorStub, Tensor] = {}

    def convert(value):
        if isinstance(value, TensorStub):
            if value not in made:
                made[value] = stub_tensor(path, scan.archive, value, infos)
            return made[value]
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, list):
            return [convert(v) for v in value]
        if isinstance(value, tuple):
            return tuple(convert(v) for v in value)
        return value

    return convert(scan.obj)


def stub_tensor(path: Path, archive: str, stub: TensorStub, infos: dict[str, zipfile.ZipInfo] | None = None) -> Tensor:
    """A lazy Tensor over the bytes of ``stub`` in the (uncompressed) zip at ``path``
    (``infos``: the archive's members by name, when the caller has them)."""
    item = dtypes.get(stub.dtype).itemsize
    if infos is None:
        with zipfile.ZipFile(path) as zf:
            infos = {info.filename: info for info in zf.infolist()}
    info = infos.get(f"{archive}/data/{stub.storage.key}")
    if info is None:
        raise CorruptInput(f"{path}: storage {stub.storage.key} is missing from the archive")
    if info.compress_type != zipfile.ZIP_STORED:
        raise CorruptInput(f"{path}: storage {stub.storage.key} is compressed; torch never writes that")
    with open(path, "rb") as f:
        start = data_offset(f, info)
    size = info.file_size
    if math.prod(stub.shape) == 0:
        return Tensor.from_bytes(b"", stub.dtype, stub.shape)
    last = stub.offset + sum((n - 1) * s for n, s in zip(stub.shape, stub.stride)) + 1
    if stub.offset < 0 or last * item > size:
        raise CorruptInput(f"{path}: a tensor reaches past the end of storage {stub.storage.key}")
    contiguous = tuple(math.prod(stub.shape[i + 1:]) for i in range(len(stub.shape)))
    if tuple(stub.stride) == contiguous:
        return Tensor.from_file(path, start + stub.offset * item, stub.dtype, stub.shape)
    whole = Tensor.from_file(path, start, stub.dtype, (size // item,))

    def load() -> np.ndarray:
        words = whole.raw()
        view = np.lib.stride_tricks.as_strided(words[stub.offset:], stub.shape, [s * item for s in stub.stride])
        return np.ascontiguousarray(view)

    return Tensor.from_loader(stub.dtype, stub.shape, load)
