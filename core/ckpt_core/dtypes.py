"""The dtypes a checkpoint tensor can have, named as safetensors names them.

Every dtype is moved as raw words of its width (``raw``: an unsigned numpy dtype), so
layout changes never pass bf16 or fp8 through a float conversion. ``numpy`` is the real
numpy dtype where numpy has one (it has none for BF16 and the FP8 kinds).

The table names numpy dtypes by their string codes, and numpy is imported only when a
dtype or an array is asked for: listing, detecting and inspecting never load numpy.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    import numpy as np


@attrs.frozen
class DType:
    name: str
    itemsize: int
    code: str | None  # numpy's dtype string ("<f4"); None where numpy has no such dtype
    is_float: bool

    @property
    def numpy(self) -> np.dtype | None:
        """The real numpy dtype, or None (BF16 and the FP8 kinds)."""
        import numpy as np

        return None if self.code is None else np.dtype(self.code)

    @property
    def raw(self) -> np.dtype:
        """Unsigned integer dtype of the same width: the dtype bytes are moved as."""
        import numpy as np

        return np.dtype(f"<u{self.itemsize}")


_TABLE = [
    DType("BOOL", 1, "|b1", False),
    DType("U8", 1, "<u1", False),
    DType("I8", 1, "<i1", False),
    DType("U16", 2, "<u2", False),
    DType("I16", 2, "<i2", False),
    DType("F16", 2, "<f2", True),
    DType("BF16", 2, None, True),
    DType("U32", 4, "<u4", False),
    DType("I32", 4, "<i4", False),
    DType("F32", 4, "<f4", True),
    DType("U64", 8, "<u8", False),
    DType("I64", 8, "<i8", False),
    DType("F64", 8, "<f8", True),
    DType("F8_E4M3", 1, None, True),
    DType("F8_E5M2", 1, None, True),
    DType("C64", 8, "<c8", False),  # complex64: two F32 words (MLX holds it)
]

DTYPES: dict[str, DType] = {d.name: d for d in _TABLE}
ALL_DTYPES: frozenset[str] = frozenset(DTYPES)
# What a format holds unless its FormatSpec declares otherwise: all but complex64, which
# formats declare explicitly (canonical, safetensors, mlx) because most training code and
# libraries have no complex weights.
STANDARD_DTYPES: frozenset[str] = ALL_DTYPES - {"C64"}


def get(name: str) -> DType:
    """The DType called ``name``; KeyError for a name safetensors does not know."""
    return DTYPES[name]


def from_numpy(dtype: np.dtype) -> str:
    """The safetensors name of a numpy dtype (native byte order is normalised to little)."""
    import numpy as np

    try:
        return _from_numpy()[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no safetensors equivalent") from None


@functools.cache
def _from_numpy() -> dict[np.dtype, str]:
    return {d.numpy: d.name for d in _TABLE if d.code is not None}


def to_float32(raw: np.ndarray, dtype: str) -> np.ndarray:
    """Values of ``raw`` words (of ``dtype``) as float32, for arithmetic.

    BF16 widens exactly by a shift; FP8 kinds are decoded by table. Used only by explicit
    arithmetic steps (merging adapters, tolerance diffs), never by layout changes. Values
    out of float32's range become infinities, as IEEE (and torch) round them: no warning.
    """
    import numpy as np

    d = get(dtype)
    if dtype == "BF16":
        return (raw.astype(np.uint32) << 16).view(np.float32)
    if dtype in ("F8_E4M3", "F8_E5M2"):
        return _fp8_table(dtype)[raw]
    with np.errstate(over="ignore", invalid="ignore"):
        return raw.view(d.numpy).astype(np.float32)


def from_float32(values: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded (to nearest even) into raw words of ``dtype`` (out of its
    range: infinities, as IEEE and torch round them, without numpy's warning)."""
    import numpy as np

    d = get(dtype)
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype == "BF16":
        bits = values.view(np.uint32)
        # in 32-bit words, which wrap only for NaN payloads (set apart below): 3x faster than 64-bit
        out = ((bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))) >> 16).astype(np.uint16)
        nan = np.isnan(values)
        out[nan] = ((bits[nan] >> 16) | 0x40).astype(np.uint16)
        return out
    if d.numpy is None:
        raise ValueError(f"rounding float32 into {dtype} is not supported")
    with np.errstate(over="ignore", invalid="ignore"):
        return values.astype(d.numpy).view(d.raw)


def _fp8_table(dtype: str) -> np.ndarray:
    """Decoded float32 value of each of the 256 FP8 codes (OCP E4M3FN / E5M2)."""
    import numpy as np

    exp_bits, man_bits = (4, 3) if dtype == "F8_E4M3" else (5, 2)
    bias = (1 << (exp_bits - 1)) - 1
    codes = np.arange(256, dtype=np.uint32)
    sign = np.where(codes >> 7, -1.0, 1.0)
    exp = (codes >> man_bits) & ((1 << exp_bits) - 1)
    man = codes & ((1 << man_bits) - 1)
    normal = (1 + man / (1 << man_bits)) * np.exp2(exp.astype(np.float64) - bias)
    subnormal = (man / (1 << man_bits)) * np.exp2(1.0 - bias)
    values = sign * np.where(exp == 0, subnormal, normal)
    if dtype == "F8_E4M3":
        values[(exp == 15) & (man == 7)] = np.nan
    else:
        top = exp == 31
        values[top & (man == 0)] = sign[top & (man == 0)] * np.inf
        values[top & (man != 0)] = np.nan
    return values.astype(np.float32)
