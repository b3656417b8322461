"""Atomic output: a destination is either untouched or complete, never half-written.

``atomic_output(dst)`` yields a temporary path with ``dst``'s own name, inside a hidden
sibling directory (``.NAME.tmp-XXXX/NAME``: writers that go by the name or suffix, such as
``x.safetensors`` being a file, see the real one); the writer creates a file or a directory
there. On success every file under it is fsync-ed, it is renamed into place in one step
(same filesystem), and the parent directory is fsync-ed. On any failure (or Ctrl-C) the
temporary is removed and the destination is as it was. Replacing an existing directory uses
``renameat2(RENAME_EXCHANGE)`` so that even then there is no instant without one. A full disk
(or quota) anywhere in this becomes ``DiskFull`` naming the destination.

A writer killed outright (SIGKILL, power loss) cannot clean up: its hidden temporary stays,
named with the writer's process id, and the next write to the same destination removes it
once that process is gone. No format reads hidden names, so leftovers are never mistaken
for checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import DestinationExists, DiskFull, NotFound, PluginError

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # what a full disk or quota raises


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """renameat2(2) with ``flags``; False where the OS or filesystem lacks it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    raise OSError(err, os.strerror(err), str(dst))


def remove(path: Path) -> None:
    """Remove a file, link or directory tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file and directory under a directory."""
    if path.is_dir():
        for root, _dirs, files in os.walk(path):
            for name in files:
                _fsync(Path(root) / name)
            _fsync(Path(root))
    else:
        _fsync(path)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_destination(dst: Path, overwrite: bool) -> None:
    """Raise before any work if ``dst`` cannot be written."""
    if (dst.exists() or dst.is_symlink()) and not overwrite:
        raise DestinationExists(f"{dst}: already exists; pass --overwrite to replace it")
    if not dst.parent.is_dir():
        raise NotFound(f"{dst.parent}: no such directory to write {dst.name} into")


@contextlib.contextmanager
def atomic_output(dst: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path named as ``dst`` (in a hidden sibling directory); move what
    was written there onto ``dst``."""
    dst = Path(dst)
    check_destination(dst, overwrite)
    _remove_stale(dst)
    holder = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = holder / dst.name
    try:
        holder.mkdir()
        yield tmp
        if not (tmp.exists() or tmp.is_symlink()):
            raise PluginError(f"{dst}: the writer produced nothing")
        fsync_tree(tmp)
        _move_into_place(tmp, dst, overwrite)
        _fsync(dst.parent)
    except OSError as e:
        if e.errno in NO_SPACE:
            what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
            raise DiskFull(f"{what} writing {dst}; nothing was written (free some space and retry)") from e
        raise
    finally:
        remove(holder)


def _remove_stale(dst: Path) -> None:
    """Remove temporaries for ``dst`` left by writers that were killed (their process is gone)."""
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.tmp-(\d+)-[0-9a-f]+")
    for sibling in dst.parent.glob(f".{glob.escape(dst.name)}.tmp-*"):
        m = pattern.fullmatch(sibling.name)
        if m and not _alive(int(m.group(1))):
            remove(sibling)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _move_into_place(tmp: Path, dst: Path, overwrite: bool) -> None:
    exists = dst.exists() or dst.is_symlink()
    if not exists:
        try:
            if not _renameat2(tmp, dst, _RENAME_NOREPLACE):
                os.rename(tmp, dst)  # no renameat2 here: a narrow race remains, as with any rename
        except FileExistsError:
            raise DestinationExists(f"{dst}: appeared while writing; pass --overwrite to replace it") from None
        return
    if not overwrite:
        raise DestinationExists(f"{dst}: already exists; pass --overwrite to replace it")
    if tmp.is_dir() == dst.is_dir() and not tmp.is_dir():
        os.replace(tmp, dst)
        return
    if _renameat2(tmp, dst, _RENAME_EXCHANGE):
        remove(tmp)  # tmp now holds the old destination
        return
    old = dst.parent / f".{dst.name}.old-{secrets.token_hex(4)}"
    os.rename(dst, old)
    os.rename(tmp, dst)
    remove(old)
