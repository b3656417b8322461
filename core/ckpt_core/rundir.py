"""Run directories: which checkpoint is latest, which to prune, and deleting them safely.

Formats list the entries (``list_checkpoints`` hook); the rules live here, once: order by
step number (never by file times), latest = the newest complete entry, prune keeps the
newest N complete ones plus any tagged ``best`` and never touches incomplete entries (one
may be a save in progress).

Deleting renames each path of an entry to a hidden ``.NAME.deleting-XXXXXXXX`` first, the
entry's own path (its weights) before its companions. A prune killed part way leaves hidden
leftovers and, at worst, companions whose main path is already hidden: such a half-deleted
entry is not listed (``visible``), and the next prune finishes the job (``sweep``).

Prune deletes only inside the run directory as given: an entry with a path whose real
location lies elsewhere (a linked ``checkpoints`` folder, a linked checkpoint) is skipped
with a warning, never followed. It also removes the hidden temporaries of writers killed
while saving into the run (``atomic.sweep``): those of dead processes on this host only, as
a process id means nothing on another host of a shared filesystem.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

from . import atomic
from .errors import CkptWarning, NotFound, UsageError
from .model import RunEntry

_DELETING = re.compile(r"\..+\.deleting-[0-9a-f]{8}")


def ordered(entries: list[RunEntry]) -> list[RunEntry]:
    """Entries by step, oldest first (entries without a step first of all)."""
    return sorted(entries, key=lambda e: (e.step is not None, e.step or 0, str(e.path)))


def latest(entries: list[RunEntry], run_dir: Path) -> RunEntry:
    """The complete entry with the largest step."""
    complete = [e for e in ordered(entries) if e.complete]
    if not complete:
        raise NotFound(f"{run_dir}: no complete checkpoint ({len(entries)} incomplete)")
    return complete[-1]


def to_prune(entries: list[RunEntry], keep: int) -> list[RunEntry]:
    """Complete entries beyond the newest ``keep``, sparing any tagged ``best`` or ``latest``
    (the one a framework's own pointer names: DeepSpeed resumes from its ``latest`` file's tag)."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (the newest complete checkpoint is never deleted), not {keep}")
    complete = [e for e in ordered(entries) if e.complete]
    spared = complete[-keep:]
    return [e for e in complete if e not in spared and not {"best", "latest"} & e.tags]


def delete(entries: list[RunEntry]) -> None:
    """Delete entries: each path is first renamed to a hidden name, the entry's own path
    first, so an interrupted prune never leaves a half-deleted checkpoint that looks complete
    (or is listed at all: see ``visible``)."""
    for entry in entries:
        paths = sorted(entry.paths or (entry.path,), key=lambda p: p != entry.path)
        hidden = []
        for p in paths:
            if p.exists() or p.is_symlink():
                target = p.parent / atomic.hidden_name(p.name, "deleting")
                p.rename(target)
                hidden.append(target)
        for h in hidden:
            atomic.remove(h)


def _half_deleted(entry: RunEntry) -> bool:
    """True for what a killed ``delete`` left of an entry: companions of a hidden main path."""
    if entry.complete or entry.path.exists():
        return False
    marker = f".{atomic.visible_part(entry.path.name)}.deleting-"
    return any(p.name.startswith(marker) and _DELETING.fullmatch(p.name) for p in _listing(entry.path.parent))


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def visible(entries: list[RunEntry]) -> list[RunEntry]:
    """The entries, less what an interrupted prune left of the checkpoints it was deleting."""
    return [e for e in entries if not _half_deleted(e)]


def inside(run_dir: Path, entries: list[RunEntry]) -> list[RunEntry]:
    """The entries whose every path really lies inside ``run_dir``; a CkptWarning names each
    other one (a linked checkpoint, or one in a linked folder), which is left alone."""
    root = Path(os.path.realpath(run_dir))
    kept = []
    for e in entries:
        outside = [p for p in (e.path, *e.paths) if root not in Path(os.path.realpath(p)).parents]
        if outside:
            warnings.warn(f"{outside[0]}: not deleted: it leads to {os.path.realpath(outside[0])}, outside {run_dir}; "
                          f"prune deletes only inside the run directory", CkptWarning, stacklevel=2)
        else:
            kept.append(e)
    return kept


def sweep(run_dir: Path, entries: list[RunEntry]) -> None:
    """Finish what killed prunes and writers left in ``run_dir``: half-deleted entries,
    hidden ``.NAME.deleting-XXXXXXXX`` leftovers and dead writers' temporaries, in every
    folder inside ``run_dir`` that holds entries."""
    delete(inside(run_dir, [e for e in entries if _half_deleted(e)]))
    root = Path(os.path.realpath(run_dir))
    folders = {run_dir, *(p.parent for e in entries for p in (e.path, *e.paths))}
    for folder in folders:
        real = Path(os.path.realpath(folder))
        if real != root and root not in real.parents:
            continue
        atomic.sweep(folder)
        for p in _listing(folder):
            if _DELETING.fullmatch(p.name):
                atomic.remove(p)
