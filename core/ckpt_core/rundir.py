"""Run directories: which checkpoint is latest, which to prune, and deleting them safely.

Formats list the entries (``list_checkpoints`` hook); the rules live here, once: order by
step number (never by file times), latest = the newest complete entry, prune keeps the
newest N complete ones plus any tagged ``best`` and never touches incomplete entries (one
may be a save in progress).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from .atomic import remove
from .errors import NotFound, UsageError
from .model import RunEntry


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
    """Complete entries beyond the newest ``keep``, sparing any tagged ``best``."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (the newest complete checkpoint is never deleted), not {keep}")
    complete = [e for e in ordered(entries) if e.complete]
    spared = complete[-keep:]
    return [e for e in complete if e not in spared and "best" not in e.tags]


def delete(entries: list[RunEntry]) -> None:
    """Delete entries: each path is first renamed to a hidden name, so an interrupted
    prune never leaves a half-deleted checkpoint that looks complete."""
    for entry in entries:
        paths = entry.paths or (entry.path,)
        hidden = []
        for p in paths:
            if p.exists() or p.is_symlink():
                target = p.parent / f".{p.name}.deleting-{secrets.token_hex(4)}"
                p.rename(target)
                hidden.append(target)
        for h in hidden:
            remove(h)
