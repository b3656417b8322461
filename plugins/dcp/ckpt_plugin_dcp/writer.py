"""Writing a canonical checkpoint as ``dcp.save`` would for ``world_size`` ranks under FSDP2.

Every tensor of the model and of the optimizer state is split along dim 0 as FSDP2 shards
it (``torch.chunk``: rank ``r`` holds rows ``[r*c, (r+1)*c)`` with ``c = ceil(rows / N)``;
a rank left no rows stores nothing); 0-d tensors (``step``) and every other value are
stored once, by rank 0. Each item is a ``torch.save`` zip written by ckpt-core's own
writer and appended to its rank's ``__R_0.distcp``; a rank's rows of a file-range tensor,
or of a tensor FSDP2 split (a concatenation of file ranges), are file ranges, copied in
the kernel (a computed tensor is made by each rank's job that holds rows of it: one
tensor in memory per worker). The rank files are ``pool.run`` jobs, as many at once as
the write has workers; each file's bytes depend on its values alone, so any number of
workers writes the same bytes. ``.metadata`` is written last: the pickle ``pickle.dump`` makes of DCP's own
metadata classes, written with stand-ins naming them (``torchfile.dumps``), so torch is
never imported.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import attrs
from ckpt_core import Checkpoint, Tensor, UsageError, pool, safetensors_io, torchfile

from . import torchtitan
from .metadata import NAME as METADATA
from .reader import EXTRA_AT_PATHS, MODEL, OPTIM, OWN, TRAIN_FIELDS

_META = "torch.distributed.checkpoint.metadata"
MAX_WORLD = 1 << 17  # ranks (one file each): beyond the largest FSDP runs (16k-32k GPUs)


def _world_size(options: dict[str, Any]) -> int:
    n = options.get("world_size", 1)
    if type(n) is not int or not 1 <= n <= MAX_WORLD:
        raise UsageError(f"--option world_size must be a number of ranks from 1 to {MAX_WORLD}, not {n!r}")
    return n


def _named(ck: Checkpoint, options: dict[str, Any]) -> Checkpoint:
    """``ck`` under the names asked for: ``names=torchtitan`` (the default for a source read
    from torchtitan's names) maps a Llama back to torchtitan's, wq/wk permuted back."""
    default = "torchtitan" if ck.layout.format == "dcp" and ck.layout.facts.get(torchtitan.FACT) else "hf"
    names = options.get("names", default)
    if names not in ("hf", "torchtitan"):
        raise UsageError(f"--option names must be hf (the names as they are) or torchtitan, not {names!r}")
    if names == "hf":
        return ck
    if ck.arch.family != "llama":
        raise UsageError(f"--option names=torchtitan maps a llama model; this one is {ck.arch.family or 'of no known family'}")
    counts = torchtitan.heads(ck.arch.params, "--option names=torchtitan")
    ts = ck.train_state
    opt = ts.optimizer if ts is not None else None
    tensors, param_state, groups, ties = torchtitan.mapped(
        ck.tensors, opt.param_state if opt else {}, opt.groups if opt else [], ck.ties, False, counts)
    if opt is not None:
        ts = attrs.evolve(ts, optimizer=attrs.evolve(opt, param_state=param_state, groups=groups))
    trainable = None if ck.trainable is None else tuple(torchtitan.rename(n, False)[0] for n in ck.trainable)
    return ck.evolve(tensors=tensors, ties=ties, train_state=ts, trainable=trainable)


def _values(ck: Checkpoint, prefixed: bool) -> list[tuple[tuple[Any, ...], Any]]:
    """(path in the dict ``dcp.save`` is given, value) for everything the checkpoint holds:
    model tensors (a tied name too, as a tied model's state dict has it), the optimizer's
    slots and groups, and under ``ckpt_core`` what DCP has no place for. A DCP source's other entries go back to their own paths; any other
    checkpoint's train-state ``extra`` goes in the ``ckpt_core`` value, keys and all."""
    found = [((MODEL, name) if prefixed else (name,), ck.tensor(name)) for name in ck.names()]
    ts = ck.train_state
    opt = ts.optimizer if ts is not None else None
    own: dict[str, Any] = {"arch": {"family": ck.arch.family, "params": ck.arch.params}, "ties": ck.ties,
                           "kv_sharing": ck.kv_sharing, "trainable": ck.trainable}
    if opt is not None:
        found += [((OPTIM, "state", name, slot), v) for name, slots in opt.param_state.items() for slot, v in slots.items()]
        found += [((OPTIM, "param_groups", i, k), v) for i, group in enumerate(opt.groups) for k, v in group.items()]
        own["optimizer"] = {"kind": opt.kind, "resumable": opt.resumable, "extra": opt.extra}
    if ts is not None:
        own["train_state"] = {field: getattr(ts, field) for field in TRAIN_FIELDS}
        at_paths = set(ck.layout.facts.get(EXTRA_AT_PATHS, ())) if ck.layout.format == "dcp" else set()
        found += _flatten((), {k: v for k, v in ts.extra.items() if k in at_paths})
        own["extra"] = {k: v for k, v in ts.extra.items() if k not in at_paths}
    return [*found, ((OWN,), own)]


def _flatten(prefix: tuple[Any, ...], tree: dict[str, Any]) -> list[tuple[tuple[Any, ...], Any]]:
    """The leaves of a nested dict, as DCP flattens a state dict (lists are values)."""
    found = []
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            found += _flatten((*prefix, k), v)
        else:
            found.append(((*prefix, k), v))
    return found


def _rows(t: Tensor, world: int) -> list[tuple[int, int]]:
    """The dim-0 rows of each rank that holds some under FSDP2 (``torch.chunk``'s split),
    rank by rank from 0; the ranks past the list hold none (rank 0 holds an empty or 0-d
    tensor's one chunk)."""
    if not t.shape or not t.shape[0]:
        return [(0, 0)]
    step = math.ceil(t.shape[0] / world)
    return [(r * step, min((r + 1) * step, t.shape[0])) for r in range(math.ceil(t.shape[0] / step))]


def _row_parts(t: Tensor) -> bool:
    """Whether ``t`` is a concatenation of whole-row pieces (a tensor FSDP2 split, joined)."""
    return bool(t.parts) and all(p.shape[1:] == t.shape[1:] for p in t.parts)


def _slice_rows(t: Tensor, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of ``t``, lazily: of a file range, a file range; of a
    concatenation of row pieces, the concatenation of their slices (file ranges when they
    are: a rank's rows of an FSDP2 source are copied in the kernel, never read)."""
    if not _row_parts(t):
        return t.slice(0, start, stop)
    pieces, at = [], 0
    for part in t.parts:
        low, high = max(start, at), min(stop, at + part.shape[0])
        if low < high:
            pieces.append(part.slice(0, low - at, high - at))
        at += part.shape[0]
    if not pieces:
        return Tensor.from_bytes(b"", t.dtype, (0, *t.shape[1:]))
    return pieces[0] if len(pieces) == 1 else Tensor.concat(pieces)


def _write_rank(path: Path, values: list[Any]) -> list[tuple[int, int]]:
    """Write one rank's ``__R_0.distcp``: each value a ``torch.save`` zip item, one after
    another; return each item's (offset, length)."""
    placed = []
    with open(path, "xb", buffering=0) as out:
        for value in values:
            start = out.tell()
            torchfile.save(value, Path("archive"), into=out)  # records under archive/, as torch.save to a buffer
            placed.append((start, out.tell() - start))
    return placed


def _size(dims) -> Any:
    return torchfile.call("torch", "Size", tuple(dims))


def _dc(name: str, **fields) -> torchfile.Instance:
    """An instance of DCP's dataclass ``name`` as pickle writes it (its fields as state)."""
    return torchfile.Instance("torch.distributed.checkpoint.filesystem" if name == "_StorageInfo" else _META, name, fields)


def _properties(dtype: str) -> torchfile.Instance:
    """``TensorProperties(dtype)`` as torch pickles it: the tuple its ``__getstate__`` gives
    (dtype, layout, requires_grad, memory format, pin_memory)."""
    return torchfile.Instance(_META, "TensorProperties", (
        torchfile.torch_dtype(dtype), torchfile.call("torch.serialization", "_get_layout", "torch.strided"), False,
        torchfile.call(_META, "_MEM_FORMAT_ENCODING", 0), False))


def write(ck: Checkpoint, directory: Path, options: dict[str, Any]) -> None:
    """Write ``ck`` as a DCP checkpoint directory for ``world_size`` ranks: planned first
    (every value's rank and key), then each rank's file by its own ``pool.run`` job, then
    ``.metadata`` from the places the jobs report."""
    world = _world_size(options)
    ck = _named(ck, options)
    prefixed = not (ck.layout.format == "dcp" and ck.layout.variant == "flat")
    entries, planner, storage = {}, {}, {}
    ranks: list[list[tuple[torchfile.Instance, Any]]] = [[] for _ in range(world)]  # (MetadataIndex, value) per rank
    for path, value in _values(ck, prefixed):
        key = ".".join(map(str, path))
        if key in entries:
            raise UsageError(f"two values flatten to the DCP key {key!r}; rename one. Nothing was written.")
        planner[key] = path
        if not isinstance(value, Tensor):
            ranks[0].append((_dc("MetadataIndex", fqn=key, offset=None, index=None), value))
            entries[key] = _dc("BytesStorageMetadata")
            continue
        chunks = []
        for rank, (start, stop) in enumerate(_rows(value, world)):
            if rank and math.prod(value.shape[1:]) == 0:
                break  # a tensor of no bytes is one chunk, rank 0's
            part = _slice_rows(value, start, stop) if value.shape else value
            offsets = [start, *[0] * (len(value.shape) - 1)] if value.shape else []
            chunks.append(_dc("ChunkStorageMetadata", offsets=_size(offsets), sizes=_size(part.shape)))
            ranks[rank].append((_dc("MetadataIndex", fqn=key, offset=_size(offsets), index=len(chunks) - 1), part))
        entries[key] = _dc("TensorStorageMetadata", properties=_properties(value.dtype), size=_size(value.shape),
                           chunks=chunks)
    directory.mkdir()
    names = [f"__{rank}_0.distcp" for rank in range(world)]
    jobs = [functools.partial(_write_rank, directory / name, [v for _, v in items]) for name, items in zip(names, ranks)]
    for name, items, placed in zip(names, ranks, pool.run(jobs)):
        storage.update((index, _stored(name, *where)) for (index, _), where in zip(items, placed))
    metadata = _dc("Metadata", state_dict_metadata=entries, planner_data=planner, storage_data=storage,
                   storage_meta=None, version=None)
    safetensors_io.write_bytes(directory / METADATA, torchfile.dumps(metadata))


def _stored(name: str, offset: int, length: int) -> torchfile.Instance:
    return _dc("_StorageInfo", relative_path=name, offset=offset, length=length, transform_descriptors=None)
