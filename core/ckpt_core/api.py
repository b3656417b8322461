"""The Python API: the same verbs as the CLI (``detect``, ``load``, ``save``, ``convert``,
``diff``, ``train_state``, and run directories: ``list_checkpoints``, ``latest``, ``prune``).

Every function raises a ``ckpt_core.errors.CkptError`` subclass for bad input; a plugin's
unexpected exception becomes a PluginError naming the plugin.
"""

from __future__ import annotations

import errno
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from . import atomic, compare, losses, progress, rundir, schema, transforms
from .errors import CkptError, CorruptInput, NotFound, PluginError, UnknownFormat, UsageError
from .model import Checkpoint, Detection, FormatSpec, RunEntry, TrainState
from .plugins import registry


def _existing(path: Path | str) -> Path:
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        raise NotFound(f"{path}: no such file or directory")
    return path


def _call(hook, format: str, **kwargs):
    """Call a firstresult hook, turning a plugin's stray exception into one clear error."""
    try:
        return hook(format=format, **kwargs)
    except CkptError:
        raise
    except FileNotFoundError as e:
        raise NotFound(f"{e.filename}: no such file or directory") from e
    except IsADirectoryError as e:
        raise CorruptInput(f"{e.filename}: is a directory where {format!r} expects a file") from e
    except NotADirectoryError as e:
        raise CorruptInput(f"{e.filename}: is a file where {format!r} expects a directory") from e
    except PermissionError as e:
        raise CkptError(f"{e.filename}: permission denied") from e
    except OSError as e:  # the file system's answer (a link loop, an I/O error), not a plugin's bug
        if e.errno == errno.ELOOP:
            raise CorruptInput(f"{e.filename}: a symbolic link that leads to itself") from e
        if e.errno in atomic.NO_SPACE:
            raise  # a full disk: the atomic writer around the call reports it (DiskFull, naming the destination)
        raise CkptError(f"{e.filename}: {e.strerror or e}") from e
    except Exception as e:
        raise PluginError(f"the {format!r} plugin failed: {type(e).__name__}: {e} (run with --debug for the traceback)") from e


def detect(path: Path | str) -> list[Detection]:
    """Every installed format's claim on ``path``, most confident first."""
    path = _existing(path)
    reg = registry()
    found: list[Detection] = []
    for impl in reg.pm.hook.detect.get_hookimpls():
        try:
            result = impl.function(path=path)
        except Exception:  # detect must never raise; a plugin that does is ignored here
            continue
        for d in result if isinstance(result, list) else [result]:
            if d is not None and d.format in reg.formats:
                found.append(d)
    return sorted(found, key=lambda d: -d.confidence)


def resolve_format(path: Path, format: str | None) -> str:
    """``format`` checked against the installed ones, or the best detection for ``path``."""
    if format:
        return registry().spec(format).name
    found = detect(path)
    if not found:
        names = ", ".join(sorted(registry().formats))
        raise UnknownFormat(f"{path}: no installed format recognises it (installed: {names}; see `ckpt-core plugins`)")
    return found[0].format


def check_options(spec: FormatSpec, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``options`` if ``spec`` declares every one of them; UsageError naming the others."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        known = ", ".join(f"{k} ({v})" for k, v in spec.options.items()) or "none"
        raise UsageError(f"format {spec.name!r} has no option {unknown[0]!r}; its options: {known}")
    return options


def load(path: Path | str, format: str | None = None, options: Mapping[str, Any] | None = None) -> Checkpoint:
    """Read a checkpoint (format detected unless given) as a lazy canonical Checkpoint."""
    path = _existing(path)
    name = resolve_format(path, format)
    reg = registry()
    opts = check_options(reg.spec(name), options)
    ck = _call(reg.hook.to_canonical, name, path=path, options=opts)
    if ck is None:
        raise PluginError(f"no plugin read format {name!r} (its plugin does not implement to_canonical)")
    ck.validate()
    if ck.arch.family in reg.families:
        schema.check(reg.families[ck.arch.family], ck)
    return ck


def save(ck: Checkpoint, path: Path | str, format: str, options: Mapping[str, Any] | None = None, *,
         overwrite: bool = False, allow_loss: Collection[str] = (), merge_adapters: bool = False,
         cast: Mapping[str, str] | None = None, show_progress: bool = False) -> Checkpoint:
    """Write ``ck`` at ``path`` in ``format``, atomically; refuse any loss not allowed.
    Returns the checkpoint as written (after merging, casting and allowed losses).

    ``merge_adapters`` merges adapters into their weights first (computes in float32);
    ``cast`` maps dtypes to cast (``{"F64": "F32"}``); ``allow_loss`` names what may be
    dropped (``train_state``, ``optimizer_state``, ``kv_sharing``, ``trainable``, ``extra``).
    """
    path = Path(path)
    reg = registry()
    spec = reg.spec(format)
    opts = check_options(spec, options)
    atomic.check_destination(path, overwrite)
    if cast:
        ck = transforms.cast(ck, cast)
    if merge_adapters:
        ck = transforms.merge_adapters(ck)
    ck = losses.apply_allowed(ck, spec, allow_loss)
    ck.validate()
    with progress.bar(ck.nbytes, f"writing {format}", enabled=show_progress), atomic.atomic_output(path, overwrite) as tmp:
        written = _call(reg.hook.from_canonical, format, checkpoint=ck, path=tmp, options=opts)
        if not written:
            raise PluginError(f"no plugin wrote format {format!r} (its plugin does not implement from_canonical)")
    return written if isinstance(written, Checkpoint) else ck


def convert(src: Path | str, dst: Path | str, to: str, options: Mapping[str, Any] | None = None, *,
            from_format: str | None = None, overwrite: bool = False, allow_loss: Collection[str] = (),
            merge_adapters: bool = False, cast: Mapping[str, str] | None = None, show_progress: bool = False) -> Checkpoint:
    """Convert ``src`` to format ``to`` at ``dst``; return the checkpoint as written. Options
    go to whichever of the two formats declares them (both, if both do); an option neither
    declares is refused."""
    src, dst = _existing(src), Path(dst)
    reg = registry()
    target = reg.spec(to)
    atomic.check_destination(dst, overwrite)
    source = reg.spec(resolve_format(src, from_format))
    options = dict(options or {})
    unknown = sorted(set(options) - set(source.options) - set(target.options))
    if unknown:
        check_options(target, {unknown[0]: None})
    read_opts = {k: v for k, v in options.items() if k in source.options}
    write_opts = {k: v for k, v in options.items() if k in target.options}
    ck = load(src, source.name, read_opts)
    return save(ck, dst, to, write_opts, overwrite=overwrite, allow_loss=allow_loss,
                merge_adapters=merge_adapters, cast=cast, show_progress=show_progress)


def diff(a: Path | str | Checkpoint, b: Path | str | Checkpoint, atol: float = 0.0, rtol: float = 0.0) -> compare.DiffReport:
    """Compare two checkpoints (paths in any formats, or loaded Checkpoints)."""
    ca = a if isinstance(a, Checkpoint) else load(a)
    cb = b if isinstance(b, Checkpoint) else load(b)
    return compare.diff(ca, cb, atol, rtol)


def train_state(path: Path | str, format: str | None = None) -> TrainState | None:
    """The training state at ``path``, read without loading weights (None if it has none)."""
    path = _existing(path)
    name = resolve_format(path, format)
    return _call(registry().hook.train_state, name, path=path)


def list_checkpoints(run_dir: Path | str, format: str | None = None) -> tuple[str, list[RunEntry]]:
    """The format that lays out ``run_dir`` and its checkpoints, oldest step first (not
    what an interrupted prune left of the ones it was deleting)."""
    name, entries = _run_entries(run_dir, format)
    return name, rundir.visible(entries)


def _run_entries(run_dir: Path | str, format: str | None) -> tuple[str, list[RunEntry]]:
    run_dir = _existing(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: not a directory; run-directory commands take a training run's folder")
    reg = registry()
    names = [reg.spec(format).name] if format else [s.name for s in reg.formats.values() if s.run_dirs]
    for name in names:
        entries = _call(reg.hook.list_checkpoints, name, run_dir=run_dir)
        if entries is not None:
            return name, rundir.ordered(entries)
    listing = ", ".join(s.name for s in reg.formats.values() if s.run_dirs) or "none installed"
    raise UnknownFormat(f"{run_dir}: no installed format recognises this run directory (formats with run directories: {listing})")


def latest(run_dir: Path | str, format: str | None = None) -> RunEntry:
    """The newest complete checkpoint of a run directory."""
    _, entries = list_checkpoints(run_dir, format)
    return rundir.latest(entries, Path(run_dir))


def prune(run_dir: Path | str, keep: int, format: str | None = None, dry_run: bool = False) -> list[RunEntry]:
    """Delete all but the newest ``keep`` complete checkpoints (never the newest complete,
    never one tagged best, never an incomplete one); return what was (or would be) deleted.
    First finishes what an earlier, interrupted prune left half-deleted."""
    _, entries = _run_entries(run_dir, format)
    doomed = rundir.to_prune(rundir.visible(entries), keep)
    if not dry_run:
        rundir.sweep(Path(run_dir), entries)
        rundir.delete(doomed)
    return doomed
