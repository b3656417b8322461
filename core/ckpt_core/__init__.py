"""ckpt-core: move model checkpoints between the layouts training code writes.

    import ckpt_core
    ck = ckpt_core.load("out/ckpt.pt")                 # format detected, tensors lazy
    ckpt_core.save(ck, "out/canon", "canonical")       # atomic, refuses losses
    ckpt_core.convert("a.safetensors", "b", to="canonical")
    report = ckpt_core.diff("a.safetensors", "b")      # report.identical

Plugins implement the hooks in ``ckpt_core.hookspecs`` with ``@ckpt_core.hookimpl``.
"""

from .api import convert, detect, diff, latest, list_checkpoints, load, prune, retention, save, train_state
from .errors import (BaseMissing, CkptError, CkptWarning, CorruptInput, DestinationExists, DestinationIsSource, DiskFull,
                     LossyConversion, NotFound, PluginError, UnknownFormat, UnsafeInput, UsageError)
from .hookspecs import hookimpl
from .model import Adapter, Arch, Checkpoint, Detection, FormatSpec, Layout, OptimizerState, RunEntry, TrainState
from .schema import FamilySchema, TensorRule
from .tensor import Tensor

__all__ = [
    "convert", "detect", "diff", "latest", "list_checkpoints", "load", "prune", "retention", "save", "train_state",
    "BaseMissing", "CkptError", "CkptWarning", "CorruptInput", "DestinationExists", "DestinationIsSource", "DiskFull", "LossyConversion", "NotFound",
    "PluginError", "UnknownFormat", "UnsafeInput", "UsageError", "hookimpl",
    "Adapter", "Arch", "Checkpoint", "Detection", "FormatSpec", "Layout", "OptimizerState", "RunEntry",
    "TrainState", "FamilySchema", "TensorRule", "Tensor",
]
