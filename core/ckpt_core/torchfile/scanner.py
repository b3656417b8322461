"""Reading a torch zip pickle without torch, without tensor data, running nothing.

``scan`` unpickles only the archive's ``data.pkl`` with an allow-list unpickler: tensors
become ``TensorStub`` records (dtype, shape, storage key: no data is read), and a class the
file names that is not a plain container becomes an inert ``Record`` (its name and the
arguments it was given), so a script-defined dataclass never runs. ``lazy`` turns a scan
with no records into what ``torch.load`` would give, tensors as lazy file ranges
(``torchfile.load`` uses it for plain checkpoints: no torch import, which costs seconds and
some 200 MB). ``stub_tensor`` reads one stub, for a file whose other parts ``weights_only``
refuses. Written by hand because no library reads torch's format without torch; it allows
less than ``weights_only`` does, never more. What it reads is bounded: the archive is
checked (``archive``), the unpickled structure too (``structure``), and a file naming more
than ``MAX_TENSORS`` tensors is refused while it is read.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import io
import math
import pickle
import pickletools
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import attrs

from .. import dtypes, files
from ..errors import CorruptInput
from ..tensor import Tensor
from . import structure
from .archive import MAX_PICKLE_BYTES, ZIP_ERRORS, Member, Span, is_zip, members, read_archive, where
from .names import LEGACY_STORAGES, TORCH_DTYPES

if TYPE_CHECKING:
    import numpy as np

MAX_TENSORS = 1_000_000  # per file; real checkpoints hold thousands

# torch's storage class names -> safetensors dtype names
_STORAGES = {cls: name for name, cls in LEGACY_STORAGES.items()} | {"UntypedStorage": "U8"}
_TORCH_DTYPES = {attr: name for name, attr in TORCH_DTYPES.items()}


class StorageStub(NamedTuple):
    key: str
    dtype: str
    numel: int


class TensorStub(NamedTuple):
    """A tensor named in a pickle: where its bytes are, never the bytes (a tuple, so that a
    file of many small tensors costs little; check for it before checking for tuples)."""

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
    elif rest and isinstance(rest[-1], type) and issubclass(rest[-1], Record):  # a dtype global it does not know
        raise CorruptInput(f"names a tensor of dtype {rest[-1].qualname}, which has no safetensors equivalent")
    return TensorStub(storage, offset, shape, stride, dtype)


_TENSOR_TYPE = object()  # what ``torch.Tensor`` reads as: only ``_rebuild_from_type_v2`` takes it


def _rebuild_from_type(func, new_type, args, state):
    """A plain tensor that carries Python attributes (``state``: DeepSpeed's ``ds_id`` on
    ZeRO-3 partitions): the tensor, attributes dropped. Only ``torch.Tensor`` itself."""
    if new_type is not _TENSOR_TYPE or getattr(func, "__func__", None) is not _Unpickler.rebuild_tensor:
        raise pickle.UnpicklingError(f"refusing _rebuild_from_type_v2 of {new_type!r}")
    return func(*args)


def _naturals(values) -> bool:
    """Whether every value is a non-negative int (what shapes, strides and offsets are)."""
    for v in values:
        if type(v) is not int or v < 0:
            return False
    return True


def _contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    """Whether ``stride`` is the row-major stride of ``shape`` (same lengths)."""
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if s != expected:
            return False
        expected *= n
    return True


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
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch", "Tensor"): _TENSOR_TYPE,
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
        self.tensors = 0

    def find_class(self, module, name):
        module, name = python3_name(module, name)
        plain = _plain_global(module, name)
        if plain is _rebuild_tensor:
            return self.rebuild_tensor
        if plain is not None:
            return plain
        qualname = f"{module}.{name}"
        if qualname not in self.records:
            self.records[qualname] = type(name, (Record,), {"qualname": qualname})
        return self.records[qualname]

    def rebuild_tensor(self, *args):
        """``_rebuild_tensor``, counted: past ``MAX_TENSORS`` the file is refused."""
        self.tensors += 1
        if self.tensors > MAX_TENSORS:
            raise CorruptInput(f"names more than {MAX_TENSORS:,} tensors, more than ckpt-core reads from one file")
        return _rebuild_tensor(*args)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")
        _, dtype, key, _location, numel = pid
        if isinstance(dtype, type) and issubclass(dtype, Record):  # a storage class it does not know
            raise CorruptInput(f"names a storage of {dtype.qualname}, which has no safetensors equivalent")
        if dtype not in dtypes.DTYPES:
            raise pickle.UnpicklingError(f"unknown storage type {dtype!r}")
        return StorageStub(str(key), dtype, int(numel))


@attrs.frozen
class Scan:
    """A torch zip pickle's structure: the unpickled object (stubs for tensors), the names
    of classes it needed that were left inert, the archive's folder name and its records."""

    obj: Any
    records: tuple[str, ...]
    archive: str
    members: dict[str, Member]


def scan(path: Path, span: Span | None = None) -> Scan:
    """Unpickle ``path``'s ``data.pkl`` (of the zip at its ``span``, if given) inertly.
    CorruptInput if it is not a readable torch zip, or what it unpickles to is out of
    bounds (``structure``, ``MAX_TENSORS``)."""
    records, member, data = read_archive(path, span)
    obj, names = scan_bytes(data, f"{where(path, span)}: data.pkl")
    return Scan(obj, names, member.rsplit("/", 1)[0], records)


def scan_bytes(data: bytes, where: str) -> tuple[Any, tuple[str, ...]]:
    """Unpickle the bare pickle ``data`` inertly, as ``scan`` does a zip's ``data.pkl``: the
    object, and the names of the classes left inert Records. CorruptInput naming ``where``
    if the pickle is damaged or what it unpickles to is out of bounds."""
    unpickler = _Unpickler(data)
    try:
        obj = unpickler.load()
    except CorruptInput as e:
        raise CorruptInput(f"{where} {e}") from None
    except Exception as e:  # any malformed pickle: the file is damaged, nothing ran
        raise CorruptInput(f"{where}: damaged pickle ({type(e).__name__}: {e})") from None
    structure.check(obj, where, structure.budget(len(data)), leaves=(TensorStub, StorageStub), inert=Record)
    return obj, tuple(sorted(unpickler.records))


def named_globals(path: Path) -> list[str]:
    """Every global the pickles of a torch file name (``module.name``, as Python 3 would
    import it), in order: read off the opcodes, nothing is unpickled. Reads ``data.pkl`` of
    a zip, else the leading pickles of the file (a legacy torch file's magic number,
    protocol, system info and data; a bare pickle). Damage ends the listing, not the call."""
    try:
        if is_zip(path):
            data = read_archive(path)[2]
        else:
            with files.open_regular(path) as f:
                data = f.read(MAX_PICKLE_BYTES)
    except (CorruptInput, *ZIP_ERRORS):
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


def lazy(path: Path, scan: Scan) -> Any:
    """``scan.obj`` with every tensor stub a lazy Tensor over the archive's bytes: what
    ``torch.load`` would give, without torch. Stubs over the same bytes share one Tensor
    (a tie, as torch shares the storage); OrderedDicts become plain dicts. A container the
    pickle names several times is converted once and shared, as unpickling shares it."""
    made: dict[TensorStub, Tensor] = {}
    converted: dict[int, Any] = {}  # id of a container -> its conversion

    def convert(value):
        if isinstance(value, TensorStub):
            if value not in made:
                made[value] = stub_tensor(path, scan.archive, value, scan.members)
            return made[value]
        if not isinstance(value, (dict, list, tuple)):
            return value
        if id(value) not in converted:
            if isinstance(value, dict):
                converted[id(value)] = {k: convert(v) for k, v in value.items()}
            else:
                converted[id(value)] = (list if isinstance(value, list) else tuple)(convert(v) for v in value)
        return converted[id(value)]

    return convert(scan.obj)


def stub_tensor(path: Path, archive: str, stub: TensorStub, records: dict[str, Member] | None = None) -> Tensor:
    """A lazy Tensor over the bytes of ``stub`` in the (uncompressed) zip at ``path``
    (``records``: the archive's ``members``, ``Scan.members``, when the caller has them)."""
    item = dtypes.get(stub.dtype).itemsize
    if records is None:
        records = members(path)
    record = records.get(f"{archive}/data/{stub.storage.key}")
    if record is None:
        raise CorruptInput(f"{path}: storage {stub.storage.key} is missing from the archive")
    start, size = record.start, record.info.file_size
    if math.prod(stub.shape) == 0:
        return Tensor.from_bytes(b"", stub.dtype, stub.shape)
    last = stub.offset + sum((n - 1) * s for n, s in zip(stub.shape, stub.stride)) + 1
    if stub.offset < 0 or last * item > size:
        raise CorruptInput(f"{path}: a tensor reaches past the end of storage {stub.storage.key}")
    if _contiguous(stub.shape, stub.stride):
        return Tensor.from_file(path, start + stub.offset * item, stub.dtype, stub.shape)
    whole = Tensor.from_file(path, start, stub.dtype, (size // item,))

    def load() -> np.ndarray:
        import numpy as np

        words = whole.raw()
        view = np.lib.stride_tricks.as_strided(words[stub.offset:], stub.shape, [s * item for s in stub.stride])
        return np.ascontiguousarray(view)

    return Tensor.from_loader(stub.dtype, stub.shape, load)
