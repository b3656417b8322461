"""Writing a torch pickle (``torch.save``'s zip format) one tensor at a time.

``torch.save`` needs every tensor in memory at once. This writes the same file from lazy
ckpt-core Tensors: the pickle (``data.pkl``) names each tensor's storage, then each
storage record is filled from its Tensor's bytes, one tensor in memory at a time. Tensors
that are the same object share one storage (a tie, as nanoGPT's ``wte``/``lm_head``).
The result loads with ``torch.load(weights_only=True, mmap=True)``. No library does this:
torch's own writer wants torch tensors in memory. Every plugin that writes ``.pt`` / ``.bin``
files uses it; torch is imported on use.
"""

from __future__ import annotations

import codecs
import collections
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .tensor import Tensor
from .torch_io import TORCH_DTYPES

PROTOCOL = 2  # torch.save's default


class _Storage:
    """One storage record: the key it is stored under and the Tensor that fills it."""

    def __init__(self, key: str, tensor: Tensor):
        self.key = key
        self.tensor = tensor


class _Bytes:
    """Pickles bytes as torch.save does (``_codecs.encode``), even empty ones, which plain
    pickle writes as ``builtins.bytes()``, a call ``weights_only`` refuses."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self):
        return codecs.encode, (self.data.decode("latin1"), "latin1")


class _TensorRef:
    """Pickles as torch pickles a contiguous tensor over a whole storage."""

    def __init__(self, storage: _Storage):
        self.storage = storage

    def __reduce_ex__(self, protocol):
        import torch

        t = self.storage.tensor
        shape = tuple(t.shape)
        stride = tuple(math.prod(shape[i + 1:]) for i in range(len(shape)))
        dtype = getattr(torch, TORCH_DTYPES[t.dtype])
        hooks = collections.OrderedDict()
        if _legacy_storage_name(dtype) is not None:
            return torch._utils._rebuild_tensor_v2, (self.storage, 0, shape, stride, False, hooks)
        return torch._utils._rebuild_tensor_v3, (self.storage, 0, shape, stride, False, hooks, dtype)


def _legacy_storage_name(dtype) -> str | None:
    """``FloatStorage`` and friends, which torch pickles where they exist (None: it has none)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TypedStorage is deprecated, but it names what torch writes
        try:
            return torch.storage.TypedStorage(dtype=dtype, device="cpu")._pickle_storage_type()
        except KeyError:
            return None


def save(obj: Any, path: Path) -> None:
    """Write ``obj`` (plain data, with ckpt-core Tensors anywhere inside) as a torch pickle.
    Tensors come back from ``torch.load`` as torch tensors, byte for byte."""
    import io

    import torch
    from torch.serialization import _open_zipfile_writer

    storages: dict[int, _Storage] = {}

    def swap(value):
        if isinstance(value, Tensor):
            if id(value) not in storages:
                storages[id(value)] = _Storage(str(len(storages)), value)
            return _TensorRef(storages[id(value)])
        if isinstance(value, (bytes, bytearray)):
            return _Bytes(bytes(value))
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, list):
            return [swap(v) for v in value]
        if isinstance(value, tuple):
            return tuple(swap(v) for v in value)
        return value

    class Pickler(pickle.Pickler):
        def persistent_id(self, value):
            if not isinstance(value, _Storage):
                return None
            t = value.tensor
            dtype = getattr(torch, TORCH_DTYPES[t.dtype])
            legacy = _legacy_storage_name(dtype)
            if legacy is None:
                return ("storage", torch.storage.UntypedStorage, value.key, "cpu", t.nbytes)
            return ("storage", getattr(torch, legacy), value.key, "cpu", t.numel)

    buffer = io.BytesIO()
    Pickler(buffer, protocol=PROTOCOL).dump(swap(obj))
    data = buffer.getvalue()
    with _open_zipfile_writer(str(path)) as writer:
        writer.write_record("data.pkl", data, len(data))
        writer.write_record(".format_version", "1", 1)
        writer.write_record(".storage_alignment", "64", 2)
        writer.write_record("byteorder", "little", len("little"))
        for storage in storages.values():
            raw = np.ascontiguousarray(storage.tensor.raw()).reshape(-1).view(np.uint8)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # raw may be read-only; torch only reads it here
                words = torch.from_numpy(raw)  # shares raw's memory: no copy
            writer.write_record(f"data/{storage.key}", words.untyped_storage(), raw.size)
