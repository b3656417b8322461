"""DeepSpeed's pickles read without DeepSpeed, and without running anything from them.

Optimizer partitions name four DeepSpeed classes. The core's scanner leaves every class a
pickle names as an inert Record; exactly these four are read here as plain data (their
stand-ins), and a file naming any other class is refused by name:

    deepspeed.runtime.zero.config.ZeroStageEnum       -> the stage, an int
    deepspeed.runtime.fp16.loss_scaler.LossScaler     -> {"class": "LossScaler", **its attributes}
    deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler  (the same; its dtype as "F16")
    deepspeed.utils.tensor_fragment.fragment_address  -> {"numel": n, "start": s}

Model-states files may hold numpy and Python RNG states (a training script's client
state): those load with ``weights_only`` torch and an allow-list of exactly the numpy
globals such states need. Tensors come back as lazy file ranges either way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
from ckpt_core.errors import CorruptInput, NotFound, UnsafeInput
from ckpt_core.torchfile import Record, TensorStub, is_zip, lazy, load_pickle, scan, tree_from_torch

ZERO_STAGE = "deepspeed.runtime.zero.config.ZeroStageEnum"
SCALERS = ("deepspeed.runtime.fp16.loss_scaler.LossScaler", "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler")
FRAGMENT = "deepspeed.utils.tensor_fragment.fragment_address"
STAND_INS = frozenset({ZERO_STAGE, *SCALERS, FRAGMENT})



def numpy_globals() -> list:
    """What numpy's (and Python's) RNG states need to unpickle: arrays, dtypes and scalars,
    under numpy 2's module names and numpy 1's (numpy imported here: start-up stays short)."""
    import numpy as np

    multiarray = np._core.multiarray
    return [
        *((multiarray._reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy._core", "numpy.core")),
        *((multiarray.scalar, f"{m}.multiarray.scalar") for m in ("numpy._core", "numpy.core")),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        *((type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
          for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)),
    ]


# The names of ``numpy_globals()``, known without importing numpy.
NUMPY_NAMES = frozenset({
    *(f"{m}.multiarray.{f}" for m in ("numpy._core", "numpy.core") for f in ("_reconstruct", "scalar")),
    "numpy.ndarray", "numpy.dtype",
    *(f"numpy.dtypes.{t}DType" for t in ("UInt32", "Int64", "Float64", "Float32", "Bool")),
})


def load(path: Path) -> Any:
    """A DeepSpeed torch file as a ckpt-core tree (tensors lazy, stand-ins plain data)."""
    if not path.is_file():
        raise NotFound(f"{path}: no such file")
    if not is_zip(path):
        with open(path, "rb") as f:
            if f.read(4) in (b"PK\x03\x04", b""):
                raise CorruptInput(f"{path}: not a whole torch zip file (truncated or damaged: an interrupted save?)")
        # a legacy torch file: torch reads it, refusing any global it needs but numpy's
        return tree_from_torch(load_pickle(path, allowed_globals=numpy_globals()))
    found = scan(path)
    unknown = sorted(set(found.records) - STAND_INS - NUMPY_NAMES)
    if unknown:
        raise UnsafeInput(f"{path}: loading it would run code from the file (it needs {', '.join(unknown)}); refused")
    if not NUMPY_NAMES & set(found.records):
        return lazy(path, attrs.evolve(found, obj=_plain(found.obj, path), records=()))
    if STAND_INS & set(found.records):
        raise UnsafeInput(f"{path}: names DeepSpeed classes and numpy objects together, which no DeepSpeed file does; refused")
    return tree_from_torch(load_pickle(path, allowed_globals=numpy_globals()))


def _plain(value: Any, path: Path) -> Any:
    """``value`` with each stand-in Record replaced by the plain data it holds."""
    if isinstance(value, Record):
        return _stand_in(value, path)
    if isinstance(value, TensorStub):  # a NamedTuple: kept whole for ``lazy``
        return value
    if isinstance(value, dict):
        return {k: _plain(v, path) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v, path) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v, path) for v in value)
    return value


def _stand_in(record: Record, path: Path) -> Any:
    name = record.qualname
    if name == ZERO_STAGE and len(record.args) == 1 and type(record.args[0]) is int:
        return record.args[0]
    if name in SCALERS and not record.args and isinstance(record.state, dict):
        state = _plain(record.state, path)
        if "dtype" in state:  # a torch dtype, which the scanner reads as its safetensors name
            state["dtype"] = getattr(state["dtype"], "name", state["dtype"])
        return {"class": name.rsplit(".", 1)[1], **state}
    if name == FRAGMENT and isinstance(record.state, dict) and set(record.state) == {"numel", "start"} \
            and all(type(v) is int and v >= 0 for v in record.state.values()):
        return dict(record.state)
    raise CorruptInput(f"{path}: a {name} that is not as DeepSpeed writes it (arguments {record.args!r})")
