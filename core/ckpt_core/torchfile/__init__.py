"""Torch's file format without running it: reading torch pickles safely, writing torch's zip.

One public face for readers and plugins (``from ckpt_core import torchfile``):

- ``load(path)``: a torch file's data as a ckpt-core tree, tensors lazy, nothing run (the
  allow-list scanner where it can, ``torch.load(weights_only=True)`` for the rest).
- ``scan``/``lazy``/``stub_tensor``: the scanner's steps, for readers that look at a
  pickle's structure (``Scan``, ``TensorStub``, ``Record``) before loading it.
- ``load_pickle``, ``from_torch``, ``to_torch``, ``tree_from_torch``: the torch-backed side.
- ``save(obj, path)``: ``torch.save``'s zip format written without torch, tensor by tensor;
  ``Instance``, ``call`` and ``torch_dtype`` name classes in it without importing them
  (``dumps``: a bare pickle of such, no tensors).
- ``is_zip``, ``members``, ``data_offset``, ``stored_records``, ``check_archive``: the zip
  archive, every local header checked against the central directory.

Modules, lowest first (none imports one after it): ``names`` (torch's dtype and storage
names), ``archive``, ``structure`` (bounds on unpickled objects), ``scanner``, ``reading``,
``writing``.
"""

from .archive import (MAX_PICKLE_BYTES, VERIFY_OPTION, check_archive, data_offset, is_zip, members, pickle_member,
                      stored_records)
from .names import LEGACY_STORAGES, TORCH_DTYPES, dtype_name
from .reading import from_torch, import_torch, load, load_pickle, to_torch, tree_from_torch
from .scanner import (MAX_TENSORS, Record, Scan, TensorStub, is_plain, lazy, named_globals, python3_name, scan, scan_bytes,
                      stub_tensor)
from .writing import Instance, call, dumps, save, torch_dtype

__all__ = [
    "MAX_PICKLE_BYTES", "VERIFY_OPTION", "check_archive", "data_offset", "is_zip", "members", "pickle_member",
    "stored_records",
    "LEGACY_STORAGES", "TORCH_DTYPES", "dtype_name",
    "from_torch", "import_torch", "load", "load_pickle", "to_torch", "tree_from_torch",
    "MAX_TENSORS", "Record", "Scan", "TensorStub", "is_plain", "lazy", "named_globals", "python3_name", "scan", "scan_bytes",
    "stub_tensor", "Instance", "call", "dumps", "save", "torch_dtype",
]
