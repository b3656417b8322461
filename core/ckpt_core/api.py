"""The Python API: the same verbs as the CLI (``detect``, ``load``, ``save``, ``convert``,
``diff``, ``train_state``, and run directories: ``list_checkpoints``, ``latest``, ``prune``).

Every function raises a ``ckpt_core.errors.CkptError`` subclass for bad input; a plugin's
unexpected exception becomes a PluginError naming the plugin.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from . import atomic, compare, files, losses, progress, rundir, schema, transforms
from .errors import CkptError, CorruptInput, DestinationExists, NotFound, PluginError, UnknownFormat, UsageError
from .model import Checkpoint, Detection, FormatSpec, RunEntry, TrainState
from .plugins import registry
from .tensor import Tensor


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
    ck = _call(reg.hook.to_canonical, name, path=path, options=opts, families=reg.families)
    if ck is None:
        raise PluginError(f"no plugin read format {name!r} (its plugin does not implement to_canonical)")
    ck.validate()
    if ck.arch.family in reg.families:
        schema.check(reg.families[ck.arch.family], ck)
    return ck


def save(ck: Checkpoint, path: Path | str, format: str, options: Mapping[str, Any] | None = None, *,
         overwrite: bool = False, allow_loss: Collection[str] = (), merge_adapters: bool = False,
         tied_head: str = "untie", cast: Mapping[str, str] | None = None, show_progress: bool = False) -> Checkpoint:
    """Write ``ck`` at ``path`` in ``format``, atomically; refuse any loss not allowed.
    Returns the checkpoint as written (after merging, casting and allowed losses).

    ``merge_adapters`` merges adapters into their weights first (computes in float32;
    ``tied_head``: what names tied to a merged weight get, see ``transforms.merge_adapters``);
    ``cast`` maps dtypes to cast (``{"F64": "F32"}``); ``allow_loss`` names what may be
    dropped (``train_state``, ``optimizer_state``, ``kv_sharing``, ``trainable``, ``extra``).
    """
    path = Path(path)
    reg = registry()
    spec = reg.spec(format)
    opts = check_options(spec, options)
    atomic.check_apart(path, None, tensor_files(ck))
    check_destination(path, overwrite)
    losses.require_base(ck, spec, merge_adapters)
    if cast:
        ck = transforms.cast(ck, cast)
    if merge_adapters:
        ck = transforms.merge_adapters(ck, tied_head)
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
    declares is refused. ``tied_head``, the option of the formats with tied adapters (LoRA),
    also sets how ``merge_adapters`` treats tied names."""
    src, dst = _existing(src), Path(dst)
    reg = registry()
    target = reg.spec(to)
    atomic.check_apart(dst, src, ())
    check_destination(dst, overwrite)
    source = reg.spec(resolve_format(src, from_format))
    options = dict(options or {})
    unknown = sorted(set(options) - set(source.options) - set(target.options))
    if unknown:
        check_options(target, {unknown[0]: None})
    read_opts = {k: v for k, v in options.items() if k in source.options}
    write_opts = {k: v for k, v in options.items() if k in target.options}
    with files.recording() as used:
        ck = load(src, source.name, read_opts)
    atomic.check_apart(dst, src, used)
    return save(ck, dst, to, write_opts, overwrite=overwrite, allow_loss=allow_loss, merge_adapters=merge_adapters,
                tied_head=options.get("tied_head", "untie") if merge_adapters else "untie", cast=cast,
                show_progress=show_progress)


def check_destination(dst: Path, overwrite: bool) -> None:
    """Raise before any work if ``dst`` cannot be written: it exists and ``overwrite`` is not
    given, or it is something ``overwrite`` never replaces. ``overwrite`` replaces a file, an
    empty directory, or a directory an installed format recognises as a checkpoint; a link is
    judged by what it leads to, and only the link itself is replaced."""
    atomic.check_destination(dst, overwrite)
    try:
        mode = os.stat(dst).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return  # nothing there (or a dangling link, replaced itself)
    if stat.S_ISREG(mode):
        return
    rule = "--overwrite replaces only a file, an empty directory or a checkpoint; remove it yourself if it should go"
    if not stat.S_ISDIR(mode):
        raise DestinationExists(f"{dst}: is {files.kind(mode)}, not a checkpoint; {rule}")
    if next(os.scandir(dst), None) is not None and not detect(dst):
        raise DestinationExists(f"{dst}: is a directory that holds files but no checkpoint an installed format "
                                f"recognises; {rule}")


def tensor_files(ck: Checkpoint) -> set[Path]:
    """The files ``ck``'s lazy tensors read their bytes from (weights, adapters, train state)."""
    return {t.file_range.path for t in _tensors(ck) if t.file_range is not None}


def _tensors(value: Any) -> Iterator[Tensor]:
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _tensors(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif attrs.has(type(value)):
        for field in attrs.fields(type(value)):
            yield from _tensors(getattr(value, field.name))


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


def retention(run_dir: Path | str, format: str | None = None) -> int | None:
    """How many checkpoints the run keeps by its own config (moshi's ``num_ckpt_keep``), or
    None when its format records none."""
    name, _ = _run_entries(run_dir, format)
    return _call(registry().hook.run_retention, name, run_dir=Path(run_dir))


def prune(run_dir: Path | str, keep: int | None = None, format: str | None = None, dry_run: bool = False) -> list[RunEntry]:
    """Delete all but the newest ``keep`` complete checkpoints (never the newest complete,
    never one tagged best, never an incomplete one, never anything outside ``run_dir``: a
    linked checkpoint or folder is skipped with a warning); return what was (or would be)
    deleted. ``keep`` None: the run's own retention (``retention``), a UsageError if it
    records none. First finishes what an earlier, interrupted prune or a killed writer left."""
    name, entries = _run_entries(run_dir, format)
    if keep is None:
        keep = retention(run_dir, name)
        if keep is None:
            raise UsageError(f"{run_dir}: the run records no retention (how many checkpoints to keep); pass --keep N")
    doomed = rundir.inside(Path(run_dir), rundir.to_prune(rundir.visible(entries), keep))
    if not dry_run:
        rundir.sweep(Path(run_dir), entries)
        rundir.delete(doomed)
    return doomed
