"""The only steps that compute: merging adapters and casting dtypes, each asked for by name.

Both are lazy (a merged or cast tensor is computed when a writer streams it) and both
compute in float32: merged weights are ``W + scale * (b @ a)`` rounded back to W's dtype
(round to nearest even), as PyTorch would round them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import dtypes
from .errors import BaseMissing, UsageError
from .model import Adapter, Checkpoint
from .tensor import Tensor

if TYPE_CHECKING:
    import numpy as np


def merged_weight(weight: Tensor, adapter: Adapter) -> Tensor:
    """``weight + scale * (b @ a)`` in float32, back in ``weight``'s dtype (lazy)."""
    if not dtypes.get(weight.dtype).is_float or weight.dtype.startswith("F8"):
        raise UsageError(f"cannot merge an adapter into a {weight.dtype} weight")

    def compute() -> np.ndarray:
        import numpy as np

        with np.errstate(over="ignore", invalid="ignore"):  # IEEE infinities and NaNs, as torch computes them
            delta = adapter.b.to_float32() @ adapter.a.to_float32()
            total = weight.to_float32() + np.float32(adapter.scale) * delta
        return dtypes.from_float32(total, weight.dtype)

    return Tensor.from_loader(weight.dtype, weight.shape, compute)


TIED_HEAD = ("untie", "tie")


def merge_adapters(ck: Checkpoint, tied_head: str = "untie") -> Checkpoint:
    """``ck`` with every adapter merged into its base tensor and removed.

    ``tied_head="untie"``: the merged value goes to the adapter's own name only. Other names
    tied to the same storage keep the unmerged tensor (so an embedding adapter never leaks
    into a tied output head, as the LoRA model computes): the tie is broken and both are
    stored. ``"tie"``: the tie is kept, and every name of that storage carries the merged value.
    """
    if tied_head not in TIED_HEAD:
        raise UsageError(f"tied_head must be one of {', '.join(TIED_HEAD)}, not {tied_head!r}")
    if ck.absent_names():
        raise BaseMissing(f"cannot merge adapters without their base weights ({ck.absent_names()[0]} is absent): "
                          f"give the base model with --option base=PATH")
    tensors = dict(ck.tensors)
    if tied_head == "tie":
        for name, adapter in ck.adapters.items():
            tensors[ck.ties.get(name, name)] = merged_weight(ck.tensor(name), adapter)
        return ck.evolve(tensors=tensors, adapters={})
    ties = dict(ck.ties)
    for name, adapter in ck.adapters.items():
        base = ck.tensor(name)
        if name in ties:
            del ties[name]
        else:
            aliases = [a for a, target in ties.items() if target == name]
            for alias in aliases:
                del ties[alias]
            if aliases:
                tensors[aliases[0]] = base
                ties.update((a, aliases[0]) for a in aliases[1:])
        tensors[name] = merged_weight(base, adapter)
    return ck.evolve(tensors=tensors, ties=ties, adapters={})


def cast(ck: Checkpoint, mapping: Mapping[str, str]) -> Checkpoint:
    """``ck`` with every tensor (and adapter matrix) of dtype X in ``mapping`` cast to
    ``mapping[X]`` through float32. Only float dtypes cast; other tensors stay as they are."""
    for src, dst in mapping.items():
        for d in (src, dst):
            if d not in dtypes.DTYPES:
                raise UsageError(f"--cast: unknown dtype {d!r}; known: {', '.join(dtypes.DTYPES)}")
            if not dtypes.get(d).is_float:
                raise UsageError(f"--cast: {d} is not a float dtype")
        if dst.startswith("F8"):
            raise UsageError(f"--cast: rounding into {dst} is not supported")

    def convert(t: Tensor) -> Tensor:
        target = mapping.get(t.dtype)
        if target is None or target == t.dtype:
            return t
        if t.is_absent:
            return Tensor.absent(target, t.shape)
        return Tensor.from_loader(target, t.shape, lambda: dtypes.from_float32(t.to_float32(), target))

    tensors = {n: convert(t) for n, t in ck.tensors.items()}
    adapters = {n: Adapter(convert(ad.a), convert(ad.b), ad.alpha, ad.scaling, ad.kind) for n, ad in ck.adapters.items()}
    return ck.evolve(tensors=tensors, adapters=adapters)
