"""The changes a user asks for by option: fresh adapters and rank changes.

- ``merge``: some adapters into their weights (``ckpt_core.transforms.merge_adapters``:
  float32, rounded back to the base dtype; ``rank_change=merge``), with a warning.
- ``add_fresh``: new adapters initialised as the fork does (A kaiming-uniform for linear
  layers, normal for the embedding table; B zeros), from a seeded generator: reproducible,
  and the model computes exactly what it did, since B is zero.
- ``pad``: an adapter padded with zeros to a larger rank and its alpha rescaled so the
  scale stays the same: the model computes exactly what it did.
"""

from __future__ import annotations

import math
import warnings

import attrs

from ckpt_core import dtypes as dtype_table
from ckpt_core import Adapter, Checkpoint, CkptWarning, Tensor, UsageError
from ckpt_core.torchfile import TORCH_DTYPES, from_torch, import_torch
from ckpt_core.transforms import merge_adapters

from . import keys


def merge(ck: Checkpoint, tied_head: str, only: list[str]) -> Checkpoint:
    """``ck`` with the adapters on ``only`` merged into their weights
    (``ckpt_core.transforms.merge_adapters``, ``tied_head`` its policy for tied names)."""
    names = [n for n in ck.adapters if n in only]
    if not names:
        return ck
    merged = merge_adapters(ck.evolve(adapters={n: ck.adapters[n] for n in names}), tied_head)
    tied = [n for n in names if n in ck.ties or n in ck.ties.values()]
    head = ""
    if tied and tied_head == "untie":
        head = ("; tied names keep the unmerged weight, untied (tied_head=untie: as the LoRA model computed; "
                "a model that ties them loads one value for both, tied_head=tie merges both)")
    elif tied:
        head = "; ties kept, tied names carry the merged weight (tied_head=tie)"
    dtypes = sorted({ck.tensor(n).dtype for n in names})
    warnings.warn(f"merged {len(names)} adapter(s) into their weights, computed in float32 and rounded to "
                  f"{'/'.join(dtypes)}{head}", CkptWarning, stacklevel=2)
    return merged.evolve(adapters={n: a for n, a in ck.adapters.items() if n not in names})


def targets_of(ck: Checkpoint, targets: list[str]) -> list[str]:
    """Canonical weight names the fork's targets (``attn``, ``embedding``) name in ``ck``."""
    unknown = [t for t in targets if t not in keys.TARGET_OPTIONS]
    if unknown:
        raise UsageError(f"targets: unknown {unknown[0]!r}; choose from {', '.join(keys.TARGET_OPTIONS)}")
    wanted = {keys.TARGET_OPTIONS[t] for t in targets}
    found = []
    for name in ck.names():
        module = keys.module_of(name)
        if module and any(keys.fits(p, module) for p in wanted):
            found.append(name)
    return found


def fresh(weight: Tensor, kind: str, rank: int, alpha: float, init: str, gen) -> Adapter:
    """A new adapter on ``weight`` [out, in]: A random (seeded ``gen``), B zeros."""
    torch = import_torch("fresh adapters (the fork's seeded initialisation)")

    out, inp = weight.shape
    dtype = getattr(torch, TORCH_DTYPES[weight.dtype])
    if kind == "embedding":  # the fork's lora_A [V, r] is canonical b; lora_B [C, r] zeros is a.T
        table = torch.empty(out, rank).normal_(generator=gen)
        return Adapter(from_torch(torch.zeros(rank, inp, dtype=dtype)), from_torch(table.to(dtype)), alpha, kind=kind)
    a = torch.empty(rank, inp)
    if init == "kaiming":
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
    else:
        a.normal_(std=1.0 / rank, generator=gen)
    return Adapter(from_torch(a.to(dtype)), from_torch(torch.zeros(out, rank, dtype=dtype)), alpha, kind=kind)


def add_fresh(ck: Checkpoint, names: list[str], rank: int, alpha: float, init: str, seed: int) -> Checkpoint:
    """``ck`` with fresh adapters of ``rank`` on ``names`` (in order, one seeded generator)."""
    torch = import_torch("fresh adapters (the fork's seeded initialisation)")

    if init not in ("kaiming", "normal"):
        raise UsageError(f"init must be kaiming or normal, not {init!r}")
    gen = torch.Generator().manual_seed(int(seed))
    adapters = dict(ck.adapters)
    for name in names:
        kind = keys.fork_target(keys.module_of(name)) or "linear"
        adapters[name] = fresh(ck.tensor(name), kind, rank, alpha, init, gen)
    return ck.evolve(adapters=adapters)


def _zeros(dtype: str, shape: tuple[int, int]) -> Tensor:
    return Tensor.from_bytes(bytes(shape[0] * shape[1] * dtype_table.get(dtype).itemsize), dtype, shape)


def pad(ad: Adapter, rank: int) -> Adapter:
    """``ad`` zero-padded to ``rank`` with alpha rescaled so that the scale is unchanged."""
    if rank < ad.rank:
        raise UsageError(f"rank_change=pad cannot shrink rank {ad.rank} to {rank}; use rank_change=merge")
    extra = rank - ad.rank
    zeros_a = _zeros(ad.a.dtype, (extra, ad.a.shape[1]))
    zeros_b = _zeros(ad.b.dtype, (ad.b.shape[0], extra))
    alpha = ad.alpha
    if ad.scaling == "alpha/rank" and ad.rank:
        alpha = ad.alpha * rank / ad.rank
    elif ad.scaling == "alpha/sqrt(rank)" and ad.rank:
        alpha = ad.alpha * math.sqrt(rank / ad.rank)
    padded = attrs.evolve(ad, a=Tensor.concat([ad.a, zeros_a], 0), b=Tensor.concat([ad.b, zeros_b], 1), alpha=alpha)
    if padded.scale != ad.scale:
        warnings.warn(f"padding rank {ad.rank} to {rank}: scale {ad.scale!r} becomes {padded.scale!r} (not bit-exact)",
                      CkptWarning, stacklevel=2)
    return padded
