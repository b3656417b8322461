"""Torch pickles and tensors, for the plugins that meet them (torch is imported on use).

The core does not depend on torch; plugins that read ``.pt`` / ``.bin`` files do, and
share this one safe path instead of each writing its own:

- ``load_pickle`` loads with ``weights_only=True`` (nothing in the file runs) and
  ``mmap=True`` (tensor data stays on disk until read). A pickle that needs other globals
  is refused with UnsafeInput naming every one of them; a damaged file is CorruptInput.
- ``from_torch`` wraps a torch tensor as a lazy ckpt-core Tensor (bytes read when a writer
  streams it); ``to_torch`` goes the other way, exactly, BF16 and FP8 included.
- ``tree_from_torch`` does that for a whole loaded pickle (optimizer state, configs).
  Writing goes the other way through ``ckpt_core.torch_save``, which streams Tensors.
"""

from __future__ import annotations

import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import CorruptInput, NotFound, UnsafeInput
from .tensor import Tensor

if TYPE_CHECKING:
    import numpy as np

# safetensors dtype name -> torch dtype attribute name
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}


def dtype_name(torch_dtype) -> str:
    """The safetensors name of a torch dtype; CorruptInput for one it has none for."""
    short = str(torch_dtype).removeprefix("torch.")
    for name, attr in TORCH_DTYPES.items():
        if attr == short:
            return name
    raise CorruptInput(f"torch dtype {short} has no safetensors equivalent")


def from_torch(t) -> Tensor:
    """A lazy Tensor over a torch tensor's bytes (an mmap-ed storage stays unread).

    A contiguous tensor that ``load_pickle`` found in its file becomes a file range, so
    writers copy it file to file in the kernel instead of through this process's memory.
    """
    import torch

    where = getattr(t, FILE_ATTR, None)
    if where is not None and t.is_contiguous():
        path, offset = where
        return Tensor.from_file(path, offset + t.storage_offset() * t.element_size(), dtype_name(t.dtype), tuple(t.shape))

    def load() -> np.ndarray:
        flat = t.detach().contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy()

    return Tensor.from_loader(dtype_name(t.dtype), tuple(t.shape), load)


def is_zip(path: Path | str) -> bool:
    """``zipfile.is_zipfile``, but False (not BadZipFile) for a damaged ZIP64 end record."""
    try:
        return zipfile.is_zipfile(path)
    except zipfile.BadZipFile:
        return False


VERIFY_OPTION = {"verify": "true: check every record of the torch archive against its CRC-32 while reading (reads all data)"}


def check_archive(path: Path | str) -> None:
    """Read every record of a torch zip file and check it against the CRC-32 torch wrote.

    Loading with ``mmap`` never reads the data, so a flipped bit inside a tensor would be
    copied along unnoticed; this reads it all (formats offer it as ``--option verify=true``).
    CorruptInput names the first damaged record.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:  # an unknown zip version
        raise CorruptInput(f"{path}: not a readable torch zip archive ({e})") from None
    if bad is not None:
        raise CorruptInput(f"{path}: record {bad} does not match its CRC-32: the file is damaged")


# The attribute ``load_pickle`` sets on each tensor it found in the file: (path, offset of
# the tensor's storage in the file).
FILE_ATTR = "_ckpt_core_file"


def data_offset(f, info: zipfile.ZipInfo) -> int:
    """Where the bytes of a stored member start in the open zip file ``f``: after its local
    header, whose name and extra lengths may differ from the central directory's."""
    f.seek(info.header_offset)
    header = f.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise CorruptInput(f"{f.name}: bad zip local header for {info.filename}")
    name_len, extra_len = int.from_bytes(header[26:28], "little"), int.from_bytes(header[28:30], "little")
    return info.header_offset + 30 + name_len + extra_len


def stored_records(path: Path | str) -> dict[int, zipfile.ZipInfo]:
    """Data offset -> ZipInfo of each uncompressed storage record (``<archive>/data/<key>``)
    of a torch zip file."""
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        return {data_offset(f, info): info for info in archive.infolist()
                if "/data/" in info.filename and info.compress_type == zipfile.ZIP_STORED}


def _mark_file_ranges(loaded: Any, path: Path) -> None:
    """Note on each tensor of ``loaded`` where its storage lies in ``path``.

    ``torch.load(mmap=True)`` maps the whole file once and slices each storage out of it,
    so a storage's address minus the mapping's start is its record's offset. The start is
    not exposed: it is found from the lowest address and checked against every storage
    (each must start at a record and fit in it); if anything disagrees, nothing is noted
    and the tensors are read through torch as before.
    """
    import torch

    tensors, stack = [], [loaded]
    while stack:
        value = stack.pop()
        if isinstance(value, torch.Tensor):
            if value.untyped_storage().nbytes():
                tensors.append(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)
    if not tensors:
        return
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    try:
        records = {offset: info.file_size for offset, info in stored_records(path).items()}
    except (OSError, zipfile.BadZipFile, NotImplementedError, CorruptInput):
        return
    lowest = min(storages)
    for first in sorted(records):
        start = lowest - first
        if all(records.get(ptr - start, -1) >= size for ptr, size in storages.items()):
            break
    else:
        return
    for t in tensors:
        setattr(t, FILE_ATTR, (path, t.untyped_storage().data_ptr() - start))


def tree_from_torch(value: Any, _made: dict[int, Tensor] | None = None) -> Any:
    """A loaded pickle's data as a ckpt-core tree: torch tensors and numpy arrays become
    lazy Tensors, numpy scalars and ``torch.Size`` plain Python, OrderedDicts plain dicts.
    One torch tensor under several keys (a tie: torch.load gives the same object) becomes
    one Tensor. (Torch is not imported for this: without it loaded, there is none to find.)"""
    import numpy as np

    made = {} if _made is None else _made
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        if id(value) not in made:
            made[id(value)] = from_torch(value)
        return made[id(value)]
    if isinstance(value, np.ndarray):
        return Tensor.from_numpy(value)
    if isinstance(value, np.generic):
        return value.item()
    if torch is not None and isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, dict):
        return {k: tree_from_torch(v, made) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tree_from_torch(v, made) for v in value)
    return value


def to_torch(t: Tensor):
    """A torch tensor with the same dtype, shape and bytes as ``t`` (reads its data)."""
    import numpy as np
    import torch

    dtype = getattr(torch, TORCH_DTYPES[t.dtype])
    if t.nbytes == 0:  # torch cannot view an empty byte tensor as a wider dtype
        return torch.empty(t.shape, dtype=dtype)
    words = torch.from_numpy(t.raw().reshape(-1).view(np.uint8).copy())
    return words.view(dtype).reshape(t.shape)


def _torch_reason(e: Exception) -> str:
    """The line of a weights-only failure that says what was wrong (torch wraps it in advice)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return next((line for line in lines if line.startswith(("Unsupported", "Trying", "Expected", "Unpickler"))), lines[-1] if lines else type(e).__name__)


def _global_name(entry) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def unsafe_globals(path: Path) -> list[str]:
    """Globals a pickle names that ``weights_only`` loading does not allow (reads, never runs)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    from .torch_pickle import python3_name

    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    return sorted({".".join(python3_name(*name.rsplit(".", 1))) for name in found if "." in name})


def load_pickle(path: Path | str, mmap: bool = True, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` made safe: weights only, mmap-ed where the file allows, on the CPU.

    ``allowed_globals`` are more globals the pickle may name (what
    ``torch.serialization.safe_globals`` takes: objects, or ``(object, "module.name")``
    pairs), for files that hold, say, numpy RNG states; a caller allows exactly the ones its
    format needs. Raises UnsafeInput naming the other globals when the pickle needs them,
    CorruptInput when the file is damaged, NotFound when it is missing.
    """
    import torch

    from . import torch_pickle

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    use_mmap = mmap and is_zip(path)  # torch's legacy (non-zip) files cannot be mmap-ed
    try:
        with torch.serialization.safe_globals(list(allowed_globals)), warnings.catch_warnings():
            # torch warns before it refuses a protocol-4 pickle: the refusal below says it in one line
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
        if use_mmap:
            _mark_file_ranges(loaded, path)
        return loaded
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            allowed = {_global_name(g) for g in allowed_globals}
            built = re.findall(r"but got <class '([\w.]+)'>", str(e))  # a type to build, which the scan misses
            named = re.findall(r"unsupported GLOBAL ([\w.]+)", str(e))  # what a legacy (non-zip) pickle needs
            names = [n for n in unsafe_globals(path) if n not in allowed] or built or named or \
                [n for n in torch_pickle.named_globals(path) if n not in allowed and not torch_pickle.is_plain(n)]
            if not names:  # not a global it refused: the bytes are not a pickle torch wrote
                raise CorruptInput(f"{path}: not a readable torch pickle ({_torch_reason(e)})") from e
            raise UnsafeInput(f"{path}: loading it would run code from the file (it needs {', '.join(names)}); refused") from e
        raise CorruptInput(f"{path}: not a readable torch pickle ({e})") from e
    except Exception as e:  # weights-only: nothing ran, so any other failure (TypeError, IndexError...) is damage
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise CorruptInput(f"{path}: not a readable torch checkpoint ({first})") from e
