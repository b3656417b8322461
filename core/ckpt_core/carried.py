"""Files a directory format carries beside its weights, unread: a Hugging Face or mlx-lm
directory's tokenizer, generation config, chat template, README.

Each is a lazy 1-d U8 tensor over the file's bytes, kept under its file name in the
checkpoint's ``extra``: nothing is read until it is written, and then it is copied file
to file in the kernel, so a converted directory gets every such file byte for byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from .errors import CorruptInput, UnsafeInput
from .safetensors_io import copy_range, plain_file, write_all, write_bytes
from .tensor import Tensor


def read(directory: Path, skip: Callable[[str], bool]) -> dict[str, Tensor]:
    """Every top-level regular file of ``directory`` whose name ``skip`` does not claim (the
    format's own config and weights), by name, unread. A link out of the directory is
    refused, as an index's shard names are."""
    found = {}
    for p in sorted(directory.iterdir()):
        if not skip(p.name) and p.is_file():
            path = plain_file(directory, p.name, directory)
            found[p.name] = Tensor.from_file(path, 0, "U8", (path.stat().st_size,))
    return found


def check(files, reserved: Callable[[str], bool], where: str) -> None:
    """Raise before anything is written unless ``files`` is what ``read`` gives (or bytes by
    name) under plain file names that ``reserved`` does not claim (the config and weights
    the format writes itself); ``where`` names the field that holds them."""
    if not isinstance(files, Mapping) or not all(
            isinstance(v, bytes) or (isinstance(v, Tensor) and v.dtype == "U8" and len(v.shape) == 1) for v in files.values()):
        raise CorruptInput(f"{where} must map file names to bytes or 1-d U8 tensors")
    for name in files:
        if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UnsafeInput(f"carried file name {name!r} is not a plain file name")
        if reserved(name):
            raise CorruptInput(f"carried file {name!r} would clash with the weights or config this writes")


def write(directory: Path, files: Mapping[str, Tensor | bytes]) -> None:
    """Write each file (checked by ``check``) into ``directory``, fsync-ed; a file range is
    copied in the kernel."""
    for name, data in files.items():
        if isinstance(data, bytes):
            write_bytes(directory / name, data)
            continue
        with open(directory / name, "xb", buffering=0) as out:
            if data.file_range is not None:
                copy_range(data.file_range, out)
            else:
                for chunk in data.iter_chunks():
                    write_all(out, chunk)
            os.fsync(out.fileno())
