"""Comparing two checkpoints: tensor by tensor, and the graph and state around them.

``diff`` backs ``ckpt-core diff``: exact (bit for bit) by default, or within ``atol`` /
``rtol`` for float tensors. Names are compared as a full state dict has them (tied names
included), so a tie on one side and two equal copies on the other compare equal.
``differences`` is the strict structural check the tests and the conformance suite use:
everything must match, ties and train state included.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from . import dtypes
from .model import Checkpoint
from .tensor import Tensor, same_bytes


@attrs.frozen
class TensorDiff:
    """How one name compares: ``status`` is same, different, dtype, shape, absent (the
    bytes are on one side only: an adapter's base weight), only_a or only_b."""

    name: str
    status: str
    detail: str = ""
    max_abs_diff: float | None = None


@attrs.frozen
class DiffReport:
    tensors: list[TensorDiff]
    other: list[str]

    @property
    def identical(self) -> bool:
        return not self.other and all(t.status == "same" for t in self.tensors)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors:
            out[t.status] = out.get(t.status, 0) + 1
        return out


def _named_tensors(ck: Checkpoint) -> dict[str, Tensor]:
    out = {name: ck.tensor(name) for name in ck.names()}
    for base, ad in ck.adapters.items():
        out[f"{base}::lora_a"] = ad.a
        out[f"{base}::lora_b"] = ad.b
    return out


def compare_tensor(name: str, a: Tensor, b: Tensor, atol: float = 0.0, rtol: float = 0.0) -> TensorDiff:
    """Compare two tensors: bytes when no tolerance, float32 values within one otherwise."""
    if a.shape != b.shape:
        return TensorDiff(name, "shape", f"{list(a.shape)} vs {list(b.shape)}")
    if a.is_absent or b.is_absent:
        if a.is_absent and b.is_absent:
            return TensorDiff(name, "same", "absent on both sides") if a.dtype == b.dtype else \
                TensorDiff(name, "dtype", f"{a.dtype} vs {b.dtype}")
        return TensorDiff(name, "absent", f"absent in {'a' if a.is_absent else 'b'} (adapters without their base)")
    exact = atol == 0 and rtol == 0
    if exact or not (dtypes.get(a.dtype).is_float and dtypes.get(b.dtype).is_float):
        if a.dtype != b.dtype:
            return TensorDiff(name, "dtype", f"{a.dtype} vs {b.dtype}")
        return TensorDiff(name, "same") if same_bytes(a, b) else TensorDiff(name, "different", "bytes differ")
    import numpy as np

    x, y = a.to_float32(), b.to_float32()
    both_nan = np.isnan(x) & np.isnan(y)
    gap = np.where(both_nan, 0, np.abs(x - y))
    worst = float(np.nanmax(gap)) if gap.size else 0.0
    ok = bool(np.all((gap <= atol + rtol * np.abs(y)) | both_nan | (x == y)))
    detail = f"max |a-b| {worst:.3g}" + (f" ({a.dtype} vs {b.dtype})" if a.dtype != b.dtype else "")
    return TensorDiff(name, "same" if ok else "different", detail, worst)


def diff(a: Checkpoint, b: Checkpoint, atol: float = 0.0, rtol: float = 0.0) -> DiffReport:
    """Compare every tensor and adapter of ``a`` and ``b``, and their families."""
    ta, tb = _named_tensors(a), _named_tensors(b)
    rows = []
    for name in [*ta, *(n for n in tb if n not in ta)]:
        if name not in tb:
            rows.append(TensorDiff(name, "only_a"))
        elif name not in ta:
            rows.append(TensorDiff(name, "only_b"))
        else:
            rows.append(compare_tensor(name, ta[name], tb[name], atol, rtol))
    other = []
    if a.arch.family != b.arch.family:
        other.append(f"family: {a.arch.family} vs {b.arch.family}")
    for name in set(a.adapters) & set(b.adapters):
        x, y = a.adapters[name], b.adapters[name]
        if (x.scale, x.kind) != (y.scale, y.kind):
            other.append(f"adapter {name}: scale {x.scale} ({x.kind}) vs {y.scale} ({y.kind})")
    return DiffReport(rows, other)


def differences(a: Checkpoint, b: Checkpoint) -> list[str]:
    """Every way ``a`` and ``b`` differ as canonical checkpoints (empty: identical).

    Tensors in order, bit for bit; arch (hyper-parameters in any order), ties, KV sharing, adapters, trainable set, train
    state and extra. ``layout`` is not compared: it says where a checkpoint was last read.
    """
    found: list[str] = []
    if list(a.tensors) != list(b.tensors):
        found.append(f"tensor names differ: {sorted(set(a.tensors) ^ set(b.tensors))[:5] or 'order differs'}")
    for name in a.tensors.keys() & b.tensors.keys():
        if not same_bytes(a.tensors[name], b.tensors[name]):
            found.append(f"tensor {name}: {a.tensors[name]!r} vs {b.tensors[name]!r} or bytes differ")
    for label, x, y in (("arch", _arch(a), _arch(b)), ("ties", a.ties, b.ties), ("kv_sharing", a.kv_sharing, b.kv_sharing),
                        ("trainable", a.trainable, b.trainable)):
        found += tree_differences(x, y, label)
    if a.adapters.keys() != b.adapters.keys():
        found.append(f"adapters on {sorted(a.adapters)} vs {sorted(b.adapters)}")
    for name in a.adapters.keys() & b.adapters.keys():
        x, y = a.adapters[name], b.adapters[name]
        found += tree_differences(attrs.asdict(x, recurse=False), attrs.asdict(y, recurse=False), f"adapter {name}")
    found += tree_differences(*(ts.to_dict() if ts else None for ts in (a.train_state, b.train_state)), "train_state")
    found += tree_differences(a.extra, b.extra, "extra")
    return found


def _arch(ck: Checkpoint) -> dict:
    """The arch as compared: the family and its hyper-parameters in key order (their order is
    no fact of the model: a format such as ``hf`` writes them in its config's order)."""
    return {"family": ck.arch.family, "params": dict(sorted(ck.arch.params.items(), key=lambda item: str(item[0])))}


def tree_differences(x: Any, y: Any, path: str) -> list[str]:
    """Where two trees of plain values and Tensors differ (tensors bit for bit)."""
    if isinstance(x, Tensor) or isinstance(y, Tensor):
        if isinstance(x, Tensor) and isinstance(y, Tensor) and same_bytes(x, y):
            return []
        return [f"{path}: {x!r} vs {y!r}"]
    if type(x) is not type(y):
        return [f"{path}: {type(x).__name__} {x!r} vs {type(y).__name__} {y!r}"]
    if isinstance(x, dict):
        if list(x) != list(y):
            return [f"{path}: keys {list(x)} vs {list(y)}"]
        return [d for k in x for d in tree_differences(x[k], y[k], f"{path}.{k}")]
    if isinstance(x, (list, tuple)):
        if len(x) != len(y):
            return [f"{path}: length {len(x)} vs {len(y)}"]
        return [d for i, (p, q) in enumerate(zip(x, y)) for d in tree_differences(p, q, f"{path}[{i}]")]
    if isinstance(x, float) and math.isnan(x) and math.isnan(y):
        return []
    return [] if x == y else [f"{path}: {x!r} vs {y!r}"]
