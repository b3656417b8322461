"""The hooks a ckpt-core plugin implements (pluggy project ``ckpt_core``).

A plugin is a module registered under the entry-point group ``ckpt_core``::

    [project.entry-points.ckpt_core]
    lora = "ckpt_plugin_lora.plugin"

and implements some of the hooks below with ``@ckpt_core.hookimpl``. Formats are named by
the FormatSpecs a plugin returns from ``ckpt_formats``; the core calls ``to_canonical``,
``from_canonical``, ``train_state``, ``list_checkpoints`` and ``run_retention`` with a format name, and every
plugin must return None for a format it does not own. The core checks options, losses
and destinations before it calls a writer, and makes every write atomic.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pluggy

from .model import Checkpoint, Detection, FormatSpec, RunEntry, TrainState
from .schema import FamilySchema

hookspec = pluggy.HookspecMarker("ckpt_core")
hookimpl = pluggy.HookimplMarker("ckpt_core")


@hookspec
def ckpt_formats() -> list[FormatSpec]:
    """Return the formats this plugin reads and writes.

    Called once when plugins load. Each FormatSpec names a format (unique across all
    installed plugins: a second plugin claiming a taken name is reported and skipped) and
    declares what it can hold: families, capabilities, dtypes, options, and whether it lists
    checkpoints in run directories. The core refuses conversions by these declarations, so
    declare only what the format really keeps.
    """


@hookspec
def ckpt_families() -> list[FamilySchema]:
    """Return the model family schemas this plugin defines.

    A schema is data: canonical tensor-name patterns with shapes over hyper-parameters,
    which parameters derive from which tensor shapes, and required config keys. A family
    shared by several plugins ships with the core (``gpt``) so each plugin installs alone.
    """


@hookspec
def detect(path: Path) -> Detection | list[Detection] | None:
    """Say whether ``path`` is in one of this plugin's formats.

    Called on every plugin for any existing path (file or directory). Return a Detection
    (format, confidence 0..1, one-line reason), a list of them, or None.

    Must be cheap and safe: read file names, headers, small JSON and a pickle's zip
    directory only. Never read tensor data, never load a whole pickle, never execute
    anything from the file, never raise for a file that simply is not yours (return None).
    """


@hookspec(firstresult=True)
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]) -> Checkpoint | None:
    """Read ``path`` (in ``format``, which this plugin owns) as a canonical Checkpoint.

    Return None when ``format`` is not yours. Tensors must be lazy (file ranges, loaders,
    lazy transforms): reading a checkpoint must not read its data. Keep everything: every
    tensor byte-exact (padding rows included), ties as edges, adapters unmerged, training
    state, and in ``layout`` / ``extra`` whatever is needed to write the same files back.
    Files at ``path`` you chose not to read (weights another file takes precedence over)
    go in ``layout.facts["ignored"]`` by name: ``inspect`` lists them. ``options`` holds only the options your FormatSpec declares. Raise CorruptInput or
    UnsafeInput (never a bare exception) for bad files; pickles load with
    ``weights_only=True``. ``families`` are the installed family schemas by name, for a
    format whose files cannot state their family (``ckpt_core.graph.recognised_arch``);
    like any hook argument, declare it only if you use it.
    """


@hookspec(firstresult=True)
def from_canonical(checkpoint: Checkpoint, path: Path, format: str, options: dict[str, Any]) -> bool | Checkpoint | None:
    """Write ``checkpoint`` at ``path`` in ``format`` (which this plugin owns); return True,
    or the Checkpoint actually written when your options made it differ from the one given
    (a teacher initialised as a student, tensors dropped on request), so that callers
    report what is on disk.

    Return None when ``format`` is not yours. ``path`` does not exist yet: it is a
    temporary path with the destination's own name (in a hidden sibling directory) that the
    core fsyncs and renames into place afterwards, so create the file or directory there and
    nothing anywhere else: never delete or change any other file.

    What the core has guaranteed before calling you: the destination is not the source, a
    folder holding it, a path inside it, or any file the read used (compared after links,
    ``..`` and by inode; else DestinationIsSource, exit 12); an existing destination is
    replaced only with ``overwrite`` and only if it is a regular file, an empty directory or
    a checkpoint an installed format detects (never a device, FIFO, socket or a folder of
    other files); the old one is removed only after yours is complete. So the tensors you
    stream may be read from anywhere but ``path``. The core has already refused what your FormatSpec cannot hold;
    refuse anything else you would drop or change by raising LossyConversion naming it and
    the option that allows it. Stream: write tensor by tensor
    (``ckpt_core.safetensors_io.write_file`` copies file ranges kernel-side), never
    materialise the whole model.

    Absent tensors (``Tensor.is_absent``: the base weights of adapters that came without
    them, ``checkpoint.absent_names()``) reach you only if your FormatSpec declares the
    ``adapters_alone`` capability: write the adapters, and the bases' names, dtypes and
    shapes where your files can say them; never read an absent tensor's bytes.
    """


@hookspec(firstresult=True)
def train_state(path: Path, format: str) -> TrainState | None:
    """Return the training state at ``path`` (in ``format``, yours) without loading weights.

    Step, epoch, best metric, metrics, optimizer and scheduler state, RNG state, data
    position and the run's config, as far as the format keeps them. Return None when
    ``format`` is not yours or the checkpoint has no training state.
    """


@hookspec(firstresult=True)
def list_checkpoints(run_dir: Path, format: str) -> list[RunEntry] | None:
    """List the checkpoints of a run directory laid out as ``format`` writes them.

    Return None when ``format`` is not yours or ``run_dir`` is not such a run directory.
    Include incomplete checkpoints (interrupted saves, missing companion files, truncated
    weights) with ``complete=False`` and a note: the core never picks them as latest and
    never prunes them. Read names and headers only.
    """


@hookspec(firstresult=True)
def run_retention(run_dir: Path, format: str) -> int | None:
    """How many of the newest checkpoints the run at ``run_dir`` (laid out as ``format``,
    yours) keeps, as the run's own config records it (moshi: ``num_ckpt_keep`` in
    ``args.yaml``). Return None when ``format`` is not yours or the run records no such
    setting; raise CorruptInput when the setting is there but not a positive integer.

    ``ckpt-core prune RUN`` without ``--keep`` keeps that many (and refuses, asking for
    ``--keep``, when no format returns one); ``ckpt-core ls`` marks the checkpoints such a
    prune would delete. Read small config files only.
    """
