"""Reading nanoGPT and modded-nanogpt pickles as canonical Checkpoints (tensors lazy).

The file loads through ``ckpt_core.torchfile.load``: nothing in it runs, no tensor data
is read, and a plain checkpoint needs no torch at all. A modded-nanogpt file whose
optimizer state needs a script-defined class is refused naming it; with ``model_only`` its
model part is read by the inert scanner instead, and the optimizer state is dropped with a
warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ckpt_core import schema, torchfile
from ckpt_core.errors import CkptWarning, CorruptInput, UnknownFormat, UnsafeInput
from ckpt_core.gpt import GPT
from ckpt_core.model import Arch, Checkpoint, Layout, OptimizerState, TrainState
from ckpt_core.tensor import Tensor
from ckpt_core.torchfile import check_archive

from . import layouts, params, trainstate
from .family import MODDED_GPT
from .kinds import KINDS, PREFIX, Kind, Unsupported, kind_of, strip_prefix

LEFTOVERS = "ckpt_core"  # what the upstream layout has no slot for, written by this plugin
EMPTY = ("optimizer", "config", "best_val_loss")  # keys a real file may hold as {} or None: nothing
DIFFERENT = ("modded-nanogpt is not nanoGPT: parameter-free RMSNorm, rotary positions, relu^2, value embeddings "
             "and skip connections; its keys map onto gpt names but the model computes differently")


def load(path: Path, fmt: str, model_only: bool) -> Any:
    """The unpickled file, tensors lazy (``ckpt_core.torchfile.load``: without torch
    for a plain pickle). For modded formats with ``model_only``, a file whose other parts
    need code has its model part read by the scanner and the rest left inert."""
    try:
        return torchfile.load(path)
    except UnsafeInput as e:
        if fmt == "nanogpt":
            raise
        try:
            scan = torchfile.scan(path)
        except CorruptInput:  # not a zip (a legacy torch file): no model part to read alone
            raise e from None
        if not model_only:
            raise UnsafeInput(f"{e} (its model part alone is safe to read: pass --option model_only=true, "
                              "which drops the optimizer state)") from None
        return _inert_model_part(path, scan)


def _inert_model_part(path: Path, scan: torchfile.Scan) -> dict:
    top = scan.obj
    if not isinstance(top, dict) or not isinstance(top.get("model"), dict):
        raise UnsafeInput(f"{path}: needs {', '.join(scan.records)} and has no separate model part to read alone")
    model, seen = {}, {}
    for key, stub in top["model"].items():
        if not isinstance(stub, torchfile.TensorStub):
            needs = f" (it needs {stub.qualname})" if isinstance(stub, torchfile.Record) else ""
            raise UnsafeInput(f"{path}: model entry {key!r} is not a tensor{needs}; refused")
        if stub not in seen:  # keys over the same bytes are a tie, as torch.load shares them
            seen[stub] = torchfile.stub_tensor(path, scan.archive, stub, scan.members)
        model[key] = seen[stub]
    dropped = [k for k, v in top.items() if k != "model" and not _plain(v)]
    warnings.warn(f"{path.name}: dropped {', '.join(dropped)} (needs {', '.join(scan.records)}); read the model part only",
                  CkptWarning, stacklevel=2)
    return {k: (model if k == "model" else v) for k, v in top.items() if k not in dropped}


def _plain(value: Any) -> bool:
    """Whether a scanned value is plain data (no inert records, no tensors)."""
    if isinstance(value, (torchfile.Record, torchfile.TensorStub)):
        return False
    if isinstance(value, dict):
        return all(_plain(k) and _plain(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return all(_plain(v) for v in value)
    return True


def split_top(path: Path, obj: Any) -> tuple[dict, dict]:
    """(top-level dict without ``model``, the model state dict); a bare state dict has no top."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return {k: v for k, v in obj.items() if k != "model"}, obj["model"]
    if isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        return {}, obj
    raise CorruptInput(f"{path}: neither a checkpoint dict with a 'model' state dict nor a bare state dict")


def model_tensors(path: Path, model: dict) -> dict[str, Tensor]:
    """The state dict's Tensors by key (a key over the same tensor as another shares its
    Tensor object: a tie); CorruptInput for an entry that is not a tensor."""
    for key, value in model.items():
        if not isinstance(value, Tensor):
            raise CorruptInput(f"{path}: model entry {key!r} is a {type(value).__name__}, not a tensor")
    return dict(model)


def read(path: Path, fmt: str, options: dict[str, Any]) -> Checkpoint:
    if options.get("verify"):
        check_archive(path)
    obj = load(path, fmt, bool(options.get("model_only", False)))
    top, model = split_top(path, obj)
    leftovers = top.pop(LEFTOVERS, {})
    if not isinstance(leftovers, dict):
        raise CorruptInput(f"{path}: its {LEFTOVERS!r} entry is not a dict")
    prefix, keys = strip_prefix(model)
    if any(k.startswith(PREFIX) for k in keys):
        raise CorruptInput(f"{path}: some keys start with {PREFIX!r} and some do not")
    upstream = dict(zip(keys, model_tensors(path, model).values()))
    kind = _kind(path, fmt, {k: t.shape for k, t in upstream.items()})
    named, unmatched = layouts.forward(upstream, kind.table)
    if unmatched:
        raise CorruptInput(f"{path}: unexpected key {prefix}{unmatched[0]} in a {kind.upstream}"
                           + (f" (and {len(unmatched) - 1} more)" if len(unmatched) > 1 else ""))
    tensors, ties = untie(named)
    shapes = {name: t.shape for name, t in named.items()}
    if kind.family == "gpt":
        arch_params = params.gpt_params(shapes, top.get("model_args"))
    else:
        warnings.warn(DIFFERENT, CkptWarning, stacklevel=2)
        arch_params = params.modded_params(shapes, kind.layout)
    arch_params = leftovers.get("arch", arch_params)
    facts = {"prefix": prefix, "variant": "dict" if obj is not model else "bare"}
    if isinstance(top.get("model_args"), dict):
        facts["model_args_keys"] = list(top["model_args"])
    empty = {k: top[k] for k in EMPTY if k in top and _empty(top[k])}
    if empty:
        facts["empty"] = empty  # written back as they were while the training state has nothing there
    extra = dict(leftovers.get("extra", {}))
    if isinstance(top.get("code"), str) and kind.family == "modded-gpt":
        extra = {kind.format: {"code": top["code"]}, **extra}
    ck = Checkpoint(arch=Arch(kind.family, arch_params), tensors=tensors, ties=ties,
                    layout=Layout(kind.format, kind.layout, facts), extra=extra)
    schema.check(GPT if kind.family == "gpt" else MODDED_GPT, ck)  # missing layers, shapes: before the optimizer
    return ck.evolve(train_state=train_state_of(path, kind, top, leftovers, tensors))


def _empty(value: Any) -> bool:
    """Whether a top-level value says "nothing": None or an empty dict (``"optimizer": {}``)."""
    return value is None or (isinstance(value, dict) and not value)


def _kind(path: Path, fmt: str, shapes: dict) -> Kind:
    try:
        kind = kind_of(shapes)
    except Unsupported as e:
        raise UnknownFormat(f"{path}: {e}, which ckpt-plugin-nanogpt does not read (refusing rather than misreading)") from None
    if kind is None:
        raise CorruptInput(f"{path}: no nanoGPT or modded-nanogpt tensor names in its state dict")
    if kind.format != fmt:
        raise CorruptInput(f"{path}: a {kind.upstream} file, not {KINDS[fmt].upstream} (read it as --from {kind.format})")
    return kind


def untie(named: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Stored tensors and ties: a Tensor object under several names is stored under the
    first and tied from the others."""
    tensors: dict[str, Tensor] = {}
    ties: dict[str, str] = {}
    first: dict[int, str] = {}
    for name, t in named.items():
        if id(t) in first:
            ties[name] = first[id(t)]
        else:
            first[id(t)] = name
            tensors[name] = t
    return tensors, ties


def train_state_of(path: Path, kind: Kind, top: dict, leftovers: dict, tensors: dict[str, Tensor]) -> TrainState | None:
    """The training state the file holds, or None (a bare state dict, a model-only file)."""
    step_key = "iter_num" if kind.family == "gpt" else "step"
    if step_key not in top and "train_state" not in leftovers:
        return None
    fields: dict[str, Any] = {"step": top.get(step_key)}
    if kind.family == "gpt":
        fields["best_metric"] = top.get("best_val_loss")
        fields["config"] = top.get("config") or {}
        if not _empty(top.get("optimizer")):
            fields["optimizer"] = trainstate.adamw_by_name(top["optimizer"], tensors, str(path))
    else:
        for key in ("optimizers", "optimizer"):  # a list of state dicts, or (2026) one
            if key in top:
                fields["optimizer"] = OptimizerState("modded-nanogpt", resumable=False, extra={key: top[key]})
    stored = dict(leftovers.get("train_state", {}))
    if isinstance(stored.get("optimizer"), dict):
        stored["optimizer"] = OptimizerState(**stored["optimizer"])
    return TrainState(**{**fields, **stored})
