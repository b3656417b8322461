"""Run directories: which checkpoint is latest, which to prune, and deleting them safely.

Formats list the entries (``list_checkpoints`` hook); the rules live here, once: order by
step number (never by file times), latest = the newest complete entry, prune keeps the
newest N complete ones plus any tagged ``best`` and never touches incomplete entries (one
may be a save in progress).

Deleting renames each path of an entry to a hidden ``.NAME.deleting-XXXXXXXX`` first, the
entry's own path (its weights) before its companions. A prune killed part way leaves hidden
leftovers and, at worst, companions whose main path is already hidden: such a half-deleted
entry is not listed (``visible``), and the next prune finishes the job (``sweep``).

Temporaries of writers killed while saving into a run (``.NAME.tmp-PID-XXXX``) are left to
the next write of the same name (``atomic``): prune cannot tell a dead writer from one on
another host of a shared filesystem, whose process id means nothing here.
"""

from __future__ import annotations

import re
import secrets
from pathlib import Path

from .atomic import remove
from .errors import NotFound, UsageError
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
                target = p.parent / f".{p.name}.deleting-{secrets.token_hex(4)}"
                p.rename(target)
                hidden.append(target)
        for h in hidden:
            remove(h)


def _half_deleted(entry: RunEntry) -> bool:
    """True for what a killed ``delete`` left of an entry: companions of a hidden main path."""
    if entry.complete or entry.path.exists():
        return False
    marker = f".{entry.path.name}.deleting-"
    return any(p.name.startswith(marker) and _DELETING.fullmatch(p.name) for p in _listing(entry.path.parent))


def _listing(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def visible(entries: list[RunEntry]) -> list[RunEntry]:
    """The entries, less what an interrupted prune left of the checkpoints it was deleting."""
    return [e for e in entries if not _half_deleted(e)]


def sweep(run_dir: Path, entries: list[RunEntry]) -> None:
    """Finish what killed prunes left in ``run_dir``: half-deleted entries and hidden
    ``.NAME.deleting-XXXXXXXX`` leftovers, in every folder that holds entries."""
    delete([e for e in entries if _half_deleted(e)])
    folders = {run_dir, *(p.parent for e in entries for p in (e.path, *e.paths))}
    for folder in folders:
        for p in _listing(folder):
            if _DELETING.fullmatch(p.name):
                remove(p)
