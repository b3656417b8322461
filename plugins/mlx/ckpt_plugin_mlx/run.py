"""A run directory: step files beside their companions, and best-validation copies in ``best/``.

A checkpoint is complete when its weights file and state JSON both exist, their headers
and JSON are valid (a truncated file fails the header's size check), and the files the
JSON names are valid too. Only names, headers and JSON are read. The core's
``ckpt_core.rundir`` orders entries, picks the latest complete one and prunes.
"""

from __future__ import annotations

from pathlib import Path

from ckpt_core import safetensors_io
from ckpt_core.errors import CkptError, CorruptInput
from ckpt_core.model import RunEntry

from . import names, statefile


def entries(run_dir: Path) -> list[RunEntry] | None:
    """Every checkpoint in ``run_dir`` and ``run_dir/best``; None if it has no step files."""
    found = []
    for folder, tags in ((run_dir, frozenset()), (run_dir / names.BEST, frozenset({"best"}))):
        if folder.is_dir():
            stems = {m.group(1): int(m.group(2)) for m in map(names.ANY_FILE.fullmatch, file_names(folder)) if m}
            found += [entry(folder / (stem + names.WEIGHTS), step, tags) for stem, step in sorted(stems.items())]
    return found or None


def file_names(folder: Path) -> list[str]:
    """The names in ``folder`` (none if it cannot be listed)."""
    try:
        return [p.name for p in folder.iterdir()]
    except OSError:
        return []


def entry(weights: Path, step: int, tags: frozenset[str] = frozenset()) -> RunEntry:
    """The checkpoint whose weights file is (or would be) ``weights``."""
    files = [weights, *(names.companion(weights, s) for s in names.COMPANIONS)]
    problem = _problem(weights)
    return RunEntry(weights, step, problem is None, tuple(p for p in files if p.is_file()), tags, problem or "")


def _problem(weights: Path) -> str | None:
    """Why the checkpoint at ``weights`` is incomplete, or None."""
    try:
        check(weights)
    except CkptError as e:
        return str(e).replace(f"{weights.parent}/", "")  # the entry's path is shown beside it
    return None


def check(weights: Path) -> None:
    """Raise the error that makes the checkpoint at ``weights`` incomplete, if any."""
    state = names.companion(weights, names.STATE)
    if not weights.is_file():
        raise CorruptInput(f"{weights}: missing (only its companion files are here)")
    if not state.is_file():
        raise CorruptInput(f"{weights}: no {state.name} beside it (an interrupted save?)")
    safetensors_io.read_header(weights)
    statefile.read(state, weights)
