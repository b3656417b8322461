"""Atomic output: a destination is either untouched or complete, never half-written.

``atomic_output(dst)`` yields a temporary path with ``dst``'s own name, inside a hidden
sibling directory (``.NAME.tmp-HOST-PID-XXXXXXXX/NAME``: writers that go by the name or
suffix, such as ``x.safetensors`` being a file, see the real one); the writer creates a file
or a directory there. On success every file under it is fsync-ed, it is renamed into place in
one step (same filesystem), and the parent directory is fsync-ed. On any failure (or Ctrl-C)
the temporary is removed and the destination is as it was. Replacing an existing directory
uses ``renameat2(RENAME_EXCHANGE)`` so that even then there is no instant without one; where
the OS lacks it, the old destination is first moved into a hidden ``.NAME.old-HOST-PID-XXXXXXXX``
directory and removed after. A full disk (or quota) anywhere in this becomes ``DiskFull`` naming the
destination.

A writer killed outright (SIGKILL, power loss) cannot clean up: its hidden directory stays,
named with the host and the writer's process id, and the next write into the same folder (or
``prune`` of a run holding it) removes it once that process is gone: only for this host, as a
process id means nothing on another host of a shared filesystem. If the writer died between
the two renames of the path without renameat2, the old destination is put back. A long NAME is cut (and a hash of it
added) so that the hidden name stays within NAME_MAX. No format reads hidden names, so
leftovers are never mistaken for checkpoints.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import DestinationExists, DestinationIsSource, DiskFull, NotFound, PluginError

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # what a full disk or quota raises
NAME_MAX = 255  # bytes in one file name, on every Linux filesystem
VISIBLE_MAX = 160  # bytes of NAME kept in a hidden name: room is left for the longest suffix
HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "localhost"
_STALE = re.compile(r"\..+\.(?P<tag>tmp|old)-(?P<host>[A-Za-z0-9._]+)-(?P<pid>\d+)-[0-9a-f]{8}")


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


def hidden_name(name: str, tag: str) -> str:
    """``.NAME.TAG-XXXXXXXX`` within NAME_MAX bytes (``tag`` at most 90 bytes), NAME as
    ``visible_part`` gives it."""
    return f".{visible_part(name)}.{tag}-{secrets.token_hex(4)}"


def visible_part(name: str) -> str:
    """``name``, or, when longer than ``VISIBLE_MAX`` bytes, its start and a hash of the
    whole: the same ``name`` always gives the same part."""
    raw = name.encode()
    if len(raw) <= VISIBLE_MAX:
        return name
    return raw[:VISIBLE_MAX - 17].decode(errors="ignore") + "~" + hashlib.sha256(raw).hexdigest()[:16]


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


def check_apart(dst: Path, src: Path | None, used: Iterable[Path]) -> None:
    """Raise DestinationIsSource if writing ``dst`` would replace, or write inside, the
    source ``src`` or a file its read ``used``: ``dst`` is one of them (compared after links
    and ``..`` are resolved, and by inode), holds one, or lies inside one."""
    targets = {Path(os.path.realpath(dst))}  # what the path leads to
    if dst.is_symlink():
        targets.add(Path(os.path.realpath(dst.parent)) / dst.name)  # and the link itself, which is replaced
    dst_inode = _inode(dst)
    for path in ([src] if src is not None else []) + sorted(set(used) - {src}):
        real = Path(os.path.realpath(path))
        what = "the source" if path == src else f"{path}, a file the read of {src or 'the checkpoint'} uses"
        for target in targets:
            if target == real or (dst_inode is not None and dst_inode == _inode(path)):
                relation = "is the source itself" if path == src else f"is {what}"
            elif target in real.parents:
                relation = f"holds {what}" + (f" ({path})" if path == src else "")
            elif real in target.parents:
                relation = f"lies inside {what}" + (f" ({path})" if path == src else "")
            else:
                continue
            raise DestinationIsSource(f"{dst}: {relation}; writing there would destroy what is being read, "
                                      f"so nothing was written (choose a destination outside it)")


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def atomic_output(dst: Path | str, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path named as ``dst`` (in a hidden sibling directory); move what
    was written there onto ``dst``."""
    dst = Path(dst)
    check_destination(dst, overwrite)
    sweep(dst.parent)
    holder = _holder(dst, "tmp")
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


def _holder(dst: Path, tag: str) -> Path:
    """A new hidden directory name beside ``dst``, saying which process on which host made it."""
    return dst.parent / hidden_name(dst.name, f"{tag}-{HOST}-{os.getpid()}")


def sweep(folder: Path) -> None:
    """Remove the hidden directories in ``folder`` of writers on this host whose process is
    gone, first putting back an old destination one left moved aside (``.old-``)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        m = _STALE.fullmatch(name)
        if m and m["host"] == HOST and not _alive(int(m["pid"])):
            holder = folder / name
            if m["tag"] == "old":  # the writer died between its two renames: put the old one back
                for old in holder.iterdir():
                    if not os.path.lexists(folder / old.name):
                        os.rename(old, folder / old.name)
            remove(holder)


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
    old = _holder(dst, "old")
    old.mkdir()
    os.rename(dst, old / dst.name)
    os.rename(tmp, dst)
    remove(old)
