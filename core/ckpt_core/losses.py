"""What a conversion would lose, found before anything is written.

``find`` compares a checkpoint with the target FormatSpec; ``apply_allowed`` removes what
the user agreed to lose, so the writer sees exactly the declared change and nothing else.
"""

from __future__ import annotations

from collections.abc import Collection

import attrs

from .errors import BaseMissing, LossyConversion, UsageError
from .model import Checkpoint, FormatSpec

# What can be allowed with ``--allow-loss``, and what it drops.
ALLOWABLE = ("train_state", "optimizer_state", "kv_sharing", "trainable", "extra")


@attrs.frozen
class Loss:
    """One thing a conversion would drop: ``kind``, the detail, and how to allow it."""

    kind: str
    detail: str
    allow: str

    def __str__(self) -> str:
        return f"{self.detail} (allow with {self.allow})" if self.allow else self.detail


def find(ck: Checkpoint, spec: FormatSpec) -> list[Loss]:
    """Everything ``ck`` has that a ``spec`` format cannot hold."""
    losses = []
    if not spec.holds_family(ck.arch.family):
        losses.append(Loss("family", f"format {spec.name!r} cannot hold family {ck.arch.family!r} "
                                     f"(it holds {', '.join(spec.families)})", ""))
    caps = spec.capabilities
    if ck.adapters and "adapters" not in caps:
        names = ", ".join(list(ck.adapters)[:3]) + (", ..." if len(ck.adapters) > 3 else "")
        losses.append(Loss("adapters", f"{len(ck.adapters)} adapter(s) on {names}", "--merge-adapters"))
    ts = ck.train_state
    if ts is not None and "train_state" not in caps:
        losses.append(Loss("train_state", f"training state (step {ts.step})", "--allow-loss train_state"))
    elif ts is not None and ts.optimizer is not None and "optimizer_state" not in caps:
        losses.append(Loss("optimizer_state", f"optimizer state ({ts.optimizer.kind or 'optimizer'}, "
                                              f"{len(ts.optimizer.param_state)} parameters)", "--allow-loss optimizer_state"))
    if ck.kv_sharing and "kv_sharing" not in caps:
        losses.append(Loss("kv_sharing", f"KV sharing map {ck.kv_sharing}", "--allow-loss kv_sharing"))
    if ck.trainable is not None and "trainable" not in caps:
        losses.append(Loss("trainable", f"trainable set ({len(ck.trainable)} tensors)", "--allow-loss trainable"))
    foreign = [f for f in ck.extra if f != spec.name and f not in spec.extra_of]
    if foreign and "extra" not in caps:
        losses.append(Loss("extra", f"format-specific fields of {', '.join(foreign)}", "--allow-loss extra"))
    bad = sorted({t.dtype for t in _all_tensors(ck)} - spec.dtypes)
    for dtype in bad:
        losses.append(Loss("dtype", f"{dtype} tensors, which {spec.name!r} cannot store", f"--cast {dtype}=<dtype>"))
    return losses


def require_base(ck: Checkpoint, spec: FormatSpec, merging: bool) -> None:
    """BaseMissing, before anything is written, when ``ck`` holds adapters without their
    base weights and the step needs those weights: merging, or a format that stores full
    weights (one without the ``adapters_alone`` capability)."""
    absent = ck.absent_names()
    if not absent or not (merging or "adapters_alone" not in spec.capabilities):
        return
    names = ", ".join(absent[:3]) + (f" and {len(absent) - 3} more" if len(absent) > 3 else "")
    need = "merging adapters" if merging else f"format {spec.name!r} (it stores full weights)"
    raise BaseMissing(f"the checkpoint holds adapters without their base weights ({names}); {need} needs them: "
                      f"give the base model with --option base=PATH. Nothing was written.")


def _all_tensors(ck: Checkpoint):
    yield from ck.tensors.values()
    for ad in ck.adapters.values():
        yield ad.a
        yield ad.b


def apply_allowed(ck: Checkpoint, spec: FormatSpec, allow: Collection[str]) -> Checkpoint:
    """``ck`` without what ``allow`` gives up; LossyConversion if anything else would be lost."""
    unknown = set(allow) - set(ALLOWABLE)
    if unknown:
        raise UsageError(f"--allow-loss takes {', '.join(ALLOWABLE)}; not {', '.join(sorted(unknown))}")
    if "train_state" in allow and "train_state" not in spec.capabilities:
        ck = ck.evolve(train_state=None)
    if "optimizer_state" in allow and ck.train_state is not None and "optimizer_state" not in spec.capabilities:
        ck = ck.evolve(train_state=attrs.evolve(ck.train_state, optimizer=None))
    if "kv_sharing" in allow and "kv_sharing" not in spec.capabilities:
        ck = ck.evolve(kv_sharing={})
    if "trainable" in allow and "trainable" not in spec.capabilities:
        ck = ck.evolve(trainable=None)
    if "extra" in allow and "extra" not in spec.capabilities:
        ck = ck.evolve(extra={k: v for k, v in ck.extra.items() if k == spec.name or k in spec.extra_of})
    left = find(ck, spec)
    if left:
        raise LossyConversion(f"converting to {spec.name!r} would lose: " + "; ".join(map(str, left)) + ". Nothing was written.", left)
    return ck
