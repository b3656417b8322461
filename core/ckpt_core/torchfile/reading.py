"""Reading torch files: the scanner where it can, torch (imported on use) for the rest.

The core does not depend on torch; plugins that read ``.pt`` / ``.bin`` files share this
one safe path instead of each writing its own:

- ``load`` is what readers call: the allow-list scanner for plain checkpoints, without
  torch; ``load_pickle`` for the rest.
- ``load_pickle`` loads with ``weights_only=True`` (nothing in the file runs) and
  ``mmap=True`` (tensor data stays on disk until read). A pickle that needs other globals
  is refused with UnsafeInput naming every one of them; a damaged file is CorruptInput, and
  so is a zip archive or an unpickled structure out of bounds (``archive``, ``structure``).
- ``from_torch`` wraps a torch tensor as a lazy ckpt-core Tensor (bytes read when a writer
  streams it); ``to_torch`` goes the other way, exactly, BF16 and FP8 included.
- ``tree_from_torch`` does that for a whole loaded pickle (optimizer state, configs).
  Writing goes the other way through ``torchfile.writing``, which streams Tensors.
"""

from __future__ import annotations

import pickle
import re
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import files
from ..errors import CorruptInput, UnsafeInput, UsageError
from ..tensor import Tensor
from . import scanner, structure
from .archive import ZIP_ERRORS, is_zip, members, stored_records
from .names import TORCH_DTYPES, dtype_name

if TYPE_CHECKING:
    import numpy as np


def import_torch(what: str):
    """The torch module; a one-line UsageError when it is not installed. Plain torch zip
    files are read and written without it: only ``what`` (a legacy pickle, globals beyond
    tensors and containers, torch's own random generators) needs it."""
    try:
        import torch
    except ImportError:
        raise UsageError(f"{what} needs torch, which is not installed: pip install torch "
                         "(each torch-file plugin's [torch] extra installs it, e.g. 'ckpt-plugin-nanogpt[torch]')") from None
    return torch


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


# The attribute ``load_pickle`` sets on each tensor it found in the file: (path, offset of
# the tensor's storage in the file).
FILE_ATTR = "_ckpt_core_file"


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
    except (*ZIP_ERRORS, CorruptInput):
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


def tree_from_torch(value: Any, _made: dict[int, Any] | None = None) -> Any:
    """A loaded pickle's data as a ckpt-core tree: torch tensors and numpy arrays become
    lazy Tensors, numpy scalars and ``torch.Size`` plain Python, OrderedDicts plain dicts.
    One torch tensor under several keys (a tie: torch.load gives the same object) becomes
    one Tensor, and a container named several times is converted once and shared. (Torch
    is not imported for this: without it loaded, there is none to find.)"""
    import numpy as np

    made = {} if _made is None else _made  # id of a tensor or container -> its conversion
    torch = sys.modules.get("torch")
    if id(value) in made:
        return made[id(value)]
    if torch is not None and isinstance(value, torch.Tensor):
        made[id(value)] = from_torch(value)
    elif isinstance(value, np.ndarray):
        return Tensor.from_numpy(value)
    elif isinstance(value, np.generic):
        return value.item()
    elif torch is not None and isinstance(value, torch.Size):
        return tuple(value)
    elif isinstance(value, dict):
        made[id(value)] = {k: tree_from_torch(v, made) for k, v in value.items()}
    elif isinstance(value, (list, tuple)):
        made[id(value)] = type(value)(tree_from_torch(v, made) for v in value)
    else:
        return value
    return made[id(value)]


def to_torch(t: Tensor):
    """A torch tensor with the same dtype, shape and bytes as ``t`` (reads its data)."""
    import numpy as np

    torch = import_torch("a torch tensor")

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

    try:
        found = get_unsafe_globals_in_checkpoint(str(path))
    except Exception:
        return []
    return sorted({".".join(scanner.python3_name(*name.rsplit(".", 1))) for name in found if "." in name})


def load_pickle(path: Path | str, mmap: bool = True, allowed_globals: Sequence[Any] = ()) -> Any:
    """``torch.load`` made safe: weights only, mmap-ed where the file allows, on the CPU.

    ``allowed_globals`` are more globals the pickle may name (what
    ``torch.serialization.safe_globals`` takes: objects, or ``(object, "module.name")``
    pairs), for files that hold, say, numpy RNG states; a caller allows exactly the ones its
    format needs. Raises UnsafeInput naming the other globals when the pickle needs them,
    CorruptInput when the file is damaged (or unpickles to a structure out of bounds),
    NotFound when it is missing.
    """
    path = files.check_regular(path)
    torch = import_torch(f"{path}: reading this pickle (a legacy non-zip file, or one naming more than tensors and "
                         "plain containers)")
    zipped = is_zip(path)
    use_mmap = mmap and zipped  # torch's legacy (non-zip) files cannot be mmap-ed
    if zipped:  # refused before torch trusts them: lying local headers, a huge or compressed record
        pickle_bytes = sum(m.info.file_size for name, m in members(path).items() if name.endswith("data.pkl"))
    else:
        pickle_bytes = path.stat().st_size
    try:
        with torch.serialization.safe_globals(list(allowed_globals)), warnings.catch_warnings():
            # torch warns before it refuses a protocol-4 pickle: the refusal below says it in one line
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
        structure.check(loaded, path, structure.budget(pickle_bytes))
        if use_mmap:
            _mark_file_ranges(loaded, path)
        return loaded
    except CorruptInput:
        raise
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            allowed = {_global_name(g) for g in allowed_globals}
            built = re.findall(r"but got <class '(\w+(?:\.\w+)+)'>", str(e))  # a type to build (not a builtin), which the scan misses
            named = re.findall(r"unsupported GLOBAL ([\w.]+)", str(e))  # what a legacy (non-zip) pickle needs
            names = [n for n in unsafe_globals(path) if n not in allowed] or built or named or \
                [n for n in scanner.named_globals(path) if n not in allowed and not scanner.is_plain(n)]
            if not names:  # not a global it refused: the bytes are not a pickle torch wrote
                raise CorruptInput(f"{path}: not a readable torch pickle ({_torch_reason(e)})") from e
            raise UnsafeInput(f"{path}: loading it would run code from the file (it needs {', '.join(names)}); refused") from e
        raise CorruptInput(f"{path}: not a readable torch pickle ({e})") from e
    except Exception as e:  # weights-only: nothing ran, so any other failure (TypeError, IndexError...) is damage
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise CorruptInput(f"{path}: not a readable torch checkpoint ({first})") from e


def load(path: Path | str, allowed_globals: Sequence[Any] = ()) -> Any:
    """A torch file's data as a ckpt-core tree, tensors lazy, nothing run.

    Read by the scanner when the pickle names only tensors and plain containers (no torch
    import); otherwise by ``load_pickle`` (weights only, ``allowed_globals`` more), which
    refuses what needs code. A file the scanner finds damaged or out of bounds is refused
    as it says, never handed to torch. Either way OrderedDicts come back as dicts and
    tensors as ``Tensor``s; CorruptInput names the file.
    """
    path = Path(path)
    if path.is_file() and is_zip(path):
        found = scanner.scan(path)
        if not found.records:
            return scanner.lazy(path, found)
    try:
        return tree_from_torch(load_pickle(path, allowed_globals=allowed_globals))
    except CorruptInput as e:
        if str(e).startswith(str(path)):
            raise
        raise CorruptInput(f"{path}: {e}") from None
