"""Opening input files: regular files only, and a record of every file a read used.

Opening a FIFO blocks until a writer comes (forever, for a reader of checkpoints), and a
device reads without end; so every reader opens through ``open_regular``, which opens
without blocking and refuses, in one line naming what the path is, anything but a regular
file. Links are followed (a Hugging Face cache links every file to a blob): what counts is
what the link leads to.

While ``recording()`` is active, every file checked or opened here is noted, so that the
core can refuse a destination that is a file the read used (``api.convert``).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import CorruptInput, NotFound

_used: contextvars.ContextVar[set[Path] | None] = contextvars.ContextVar("ckpt_core_files_used", default=None)

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))


def kind(mode: int) -> str:
    """What a ``st_mode`` is, in words (``"a FIFO (named pipe)"``)."""
    return next((name for test, name in _KINDS if test(mode)), "an unknown kind of file")


def _refuse(path: Path, mode: int) -> CorruptInput:
    return CorruptInput(f"{path}: is {kind(mode)}, not a file; give the path of a regular file")


def check_regular(path: Path | str) -> Path:
    """``path`` if it is (or links to) a regular file, noted as used; NotFound if it is
    missing, CorruptInput naming what it is otherwise. For readers that hand the path to a
    library that opens it itself (``torch.load``)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, st.st_mode)
    note(path)
    return path


def open_regular(path: Path | str, buffering: int = -1) -> BinaryIO:
    """``path`` opened for binary reading if it is (or links to) a regular file, noted as
    used. Opens non-blocking (a FIFO cannot hang the open) and checks the opened file
    itself, so a path swapped between a check and the open cannot slip through."""
    path = Path(path)
    try:
        f = open(path, "rb", buffering=buffering, opener=_open_regular)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    note(path)
    return f


def _open_regular(path: str, flags: int) -> int:
    fd = os.open(path, flags | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(Path(path), mode)
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text(path: Path | str, limit: int) -> str:
    """The first ``limit`` bytes of a regular file as UTF-8 (a small config or tag file);
    raises UnicodeDecodeError for text that is not UTF-8."""
    with open_regular(path) as f:
        return f.read(limit).decode("utf-8")


def note(path: Path | str) -> None:
    """Note ``path`` as used by the read being recorded (if one is)."""
    used = _used.get()
    if used is not None:
        used.add(Path(path))


@contextlib.contextmanager
def recording() -> Iterator[set[Path]]:
    """Collect, into the set yielded, every file noted while the block runs."""
    used: set[Path] = set()
    token = _used.set(used)
    try:
        yield used
    finally:
        _used.reset(token)
