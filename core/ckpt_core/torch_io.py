"""Torch pickles and tensors, for the plugins that meet them (torch is imported on use).

The core does not depend on torch; plugins that read ``.pt`` / ``.bin`` files do, and
share this one safe path instead of each writing its own:

- ``load_pickle`` loads with ``weights_only=True`` (nothing in the file runs) and
  ``mmap=True`` (tensor data stays on disk until read). A pickle that needs other globals
  is refused with UnsafeInput naming every one of them; a damaged file is CorruptInput.
- ``from_torch`` wraps a torch tensor as a lazy ckpt-core Tensor (bytes read when a writer
  streams it); ``to_torch`` goes the other way, exactly, BF16 and FP8 included.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import CorruptInput, NotFound, UnsafeInput
from .tensor import Tensor

# safetensors dtype name -> torch dtype attribute name
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
}


def dtype_name(torch_dtype) -> str:
    """The safetensors name of a torch dtype; CorruptInput for one it has none for."""
    short = str(torch_dtype).removeprefix("torch.")
    for name, attr in TORCH_DTYPES.items():
        if attr == short:
            return name
    raise CorruptInput(f"torch dtype {short} has no safetensors equivalent")


def from_torch(t) -> Tensor:
    """A lazy Tensor over a torch tensor's bytes (an mmap-ed storage stays unread)."""
    import torch

    def load() -> np.ndarray:
        flat = t.detach().contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy()

    return Tensor.from_loader(dtype_name(t.dtype), tuple(t.shape), load)


def to_torch(t: Tensor):
    """A torch tensor with the same dtype, shape and bytes as ``t`` (reads its data)."""
    import torch

    words = torch.from_numpy(t.raw().reshape(-1).view(np.uint8).copy())
    return words.view(getattr(torch, TORCH_DTYPES[t.dtype])).reshape(t.shape)


def unsafe_globals(path: Path) -> list[str]:
    """Globals a pickle names that ``weights_only`` loading does not allow (reads, never runs)."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        return sorted(get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return []


def load_pickle(path: Path | str, mmap: bool = True) -> Any:
    """``torch.load`` made safe: weights only, mmap-ed where the file allows, on the CPU.

    Raises UnsafeInput naming the globals when the pickle needs code to load, CorruptInput
    when the file is damaged, NotFound when it is missing.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    use_mmap = mmap and zipfile.is_zipfile(path)  # torch's legacy (non-zip) files cannot be mmap-ed
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" in str(e):
            names = unsafe_globals(path) or ["(see --debug)"]
            raise UnsafeInput(f"{path}: loading it would run code from the file (it needs {', '.join(names)}); refused") from e
        raise CorruptInput(f"{path}: not a readable torch pickle ({e})") from e
    except (RuntimeError, EOFError, ValueError, zipfile.BadZipFile, OSError) as e:
        first = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        raise CorruptInput(f"{path}: not a readable torch checkpoint ({first})") from e
