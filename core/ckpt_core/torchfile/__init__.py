"""Torch's file format without running it: reading torch pickles safely, writing torch's zip.

One public face for readers and plugins (``from ckpt_core import torchfile``):

- ``load(path)``: a torch file's data as a ckpt-core tree, tensors lazy, nothing run (the
  allow-list scanner where it can, ``torch.load(weights_only=True)`` for the rest).
- ``scan``/``lazy``/``stub_tensor``: the scanner's steps, for readers that look at a
  pickle's structure (``Scan``, ``TensorStub``, ``Record``) before loading it.
- ``load_pickle``, ``from_torch``, ``to_torch``, ``tree_from_torch``: the torch-backed side.
- ``save(obj, path)``: ``torch.save``'s zip format written without torch, tensor by tensor.
- ``is_zip``, ``data_offset``, ``stored_records``, ``check_archive``: the zip archive.
"""

from .reading import (TORCH_DTYPES, VERIFY_OPTION, check_archive, data_offset, dtype_name, from_torch, is_zip,
                      load_pickle, stored_records, to_torch, tree_from_torch)
from .scanner import Record, Scan, TensorStub, is_plain, lazy, load, named_globals, python3_name, scan, stub_tensor
from .writing import LEGACY_STORAGES, save

__all__ = [
    "TORCH_DTYPES", "VERIFY_OPTION", "check_archive", "data_offset", "dtype_name", "from_torch", "is_zip",
    "load_pickle", "stored_records", "to_torch", "tree_from_torch",
    "Record", "Scan", "TensorStub", "is_plain", "lazy", "load", "named_globals", "python3_name", "scan", "stub_tensor",
    "LEGACY_STORAGES", "save",
]
