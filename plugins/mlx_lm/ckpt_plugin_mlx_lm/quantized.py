"""Quantized weights as mlx stores them, and unpacking them exactly as ``mx.dequantize``.

A quantized Linear or Embedding at module path ``p`` keeps ``p.weight`` as uint32 words
packing ``bits``-bit integers (little-endian, bit after bit: [out, in * bits / 32]),
``p.scales`` and ``p.biases`` ([out, in / group_size], the model's float dtype), and any
``p.bias`` as it is. The config's ``quantization`` gives ``group_size``, ``bits`` and
``mode`` for every module, and per-module overrides keyed by path (a dict, or false for
a module left as it is); a module is quantized when its ``scales`` are stored (mlx-lm's rule).

Only ``affine`` (w = scales * q + biases, per group) is unpacked here; the other modes
(mxfp4, nvfp4, mxfp8) are read and written packed, as they are.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import attrs

from ckpt_core import CorruptInput, Tensor, UsageError, dtypes

SCALES, BIASES, WEIGHT = ".scales", ".biases", ".weight"
BLOCK = 1 << 20  # values unpacked at a time


@attrs.frozen
class Packing:
    """How one module's weight is packed."""

    group_size: int
    bits: int
    mode: str


def modules(tensors: Mapping[str, Tensor], quantization: dict, where: str) -> dict[str, Packing]:
    """Module path -> Packing for every quantized module of ``tensors`` (those with scales),
    checked against the stored shapes; CorruptInput naming ``where`` when they disagree."""
    if not isinstance(quantization, dict):
        raise CorruptInput(f"{where}: quantization must be an object, not {type(quantization).__name__}")
    found = {}
    for name in tensors:
        if not name.endswith(SCALES):
            continue
        path = name[:-len(SCALES)]
        own = quantization.get(path, quantization)
        if not isinstance(own, dict):
            raise CorruptInput(f"{where}: {path} has stored scales but its quantization entry is {own!r}")
        packing = Packing(own.get("group_size", quantization.get("group_size")), own.get("bits", quantization.get("bits")),
                          own.get("mode", quantization.get("mode", "affine")))
        _check(path, packing, tensors, where)
        found[path] = packing
    return found


def _check(path: str, packing: Packing, tensors: Mapping[str, Tensor], where: str) -> None:
    weight, scales = tensors.get(path + WEIGHT), tensors[path + SCALES]
    biases = tensors.get(path + BIASES)
    gs, bits = packing.group_size, packing.bits
    if not (type(gs) is int and type(bits) is int and gs > 0 and 0 < bits <= 32):
        raise CorruptInput(f"{where}: {path}: group_size {gs!r} and bits {bits!r} must be positive integers")
    if weight is None or weight.dtype != "U32" or not weight.shape:
        raise CorruptInput(f"{where}: {path} has scales but no uint32 packed weight")
    if weight.shape[-1] * 32 % bits:
        raise CorruptInput(f"{where}: {path}.weight has {weight.shape[-1]} words per row, not a whole number of {bits}-bit values")
    columns = weight.shape[-1] * 32 // bits
    if scales.shape != (*weight.shape[:-1], columns // gs) or columns % gs:
        raise CorruptInput(f"{where}: {path}.scales is {list(scales.shape)}; {bits}-bit weight {list(weight.shape)} "
                           f"in groups of {gs} needs {[*weight.shape[:-1], columns // gs]}")
    if packing.mode == "affine" and (biases is None or biases.shape != scales.shape or biases.dtype != scales.dtype):
        raise CorruptInput(f"{where}: {path}.biases must match {path}.scales ({scales.dtype} {list(scales.shape)})")


def parameter_count(tensors: Mapping[str, Tensor], packed: Mapping[str, Packing]) -> int:
    """``total_parameters`` as mlx-lm counts them: a quantized module's weight as the values
    it packs (its scales and biases not counted), every other tensor element by element."""
    quantization_tensors = {p + s for p in packed for s in (SCALES, BIASES)}
    total = 0
    for name, t in tensors.items():
        if name in quantization_tensors:
            continue
        path = name[:-len(WEIGHT)] if name.endswith(WEIGHT) else None
        total += math.prod(t.shape) * 32 // packed[path].bits if path in packed else math.prod(t.shape)
    return total


def unpacked(tensors: Mapping[str, Tensor], packed: Mapping[str, Packing]) -> dict[str, Tensor]:
    """``tensors`` with every quantized module's weight unpacked (lazily, one at a time when
    written) into its scales' dtype, its scales and biases gone; the order kept."""
    modes = sorted({p.mode for p in packed.values()} - {"affine"})
    if modes:
        raise UsageError(f"dequantize unpacks affine quantization only; this checkpoint has {', '.join(modes)} weights")
    out = {}
    for name, t in tensors.items():
        path = name[:-len(WEIGHT)] if name.endswith(WEIGHT) else None
        if path in packed:
            out[name] = _dequantized(t, tensors[path + SCALES], tensors[path + BIASES], packed[path])
        elif not (name.endswith((SCALES, BIASES)) and name.rsplit(".", 1)[0] in packed):
            out[name] = t
    return out


def _dequantized(weight: Tensor, scales: Tensor, biases: Tensor, packing: Packing) -> Tensor:
    shape = (*weight.shape[:-1], weight.shape[-1] * 32 // packing.bits)
    return Tensor(scales.dtype, shape, load=lambda: dequantize(weight.raw(), scales.raw(), biases.raw(), scales.dtype,
                                                               packing.group_size, packing.bits))


def dequantize(words, scales, biases, dtype: str, group_size: int, bits: int):
    """``mx.dequantize(w, scales, biases, group_size, bits)`` in numpy, bit for bit: mlx
    computes ``scales * q + biases`` in the scales' dtype, rounding after the product and
    after the sum (for bf16 and fp16: each step in float32, rounded back). Raw words in,
    raw words of ``dtype`` out; worked through a block of rows at a time, so that what is
    held beside the result stays small."""
    import numpy as np

    shape = (*words.shape[:-1], words.shape[-1] * 32 // bits)
    columns = shape[-1]
    words, scales, biases = (a.reshape(-1, a.shape[-1]) for a in (words, scales, biases))
    out = np.empty((words.shape[0], columns), dtype=dtypes.get(dtype).raw)
    step = max(1, BLOCK // max(columns, 1))
    for start in range(0, words.shape[0], step):
        rows = slice(start, start + step)
        q = unpack(words[rows], bits).astype(np.float32)
        s = np.repeat(dtypes.to_float32(scales[rows], dtype), group_size, axis=-1)
        b = np.repeat(dtypes.to_float32(biases[rows], dtype), group_size, axis=-1)
        product = dtypes.to_float32(dtypes.from_float32(s * q, dtype), dtype)
        out[rows] = dtypes.from_float32(product + b, dtype)
    return out.reshape(shape)


def unpack(words, bits: int):
    """The ``bits``-bit integers packed in uint32 ``words`` along the last axis, as mlx packs
    them: the row's bytes little-endian, each value's bits lowest first, value after value."""
    import numpy as np

    stream = np.unpackbits(np.ascontiguousarray(words, dtype="<u4").view(np.uint8), axis=-1, bitorder="little")
    fields = stream.reshape(*stream.shape[:-1], stream.shape[-1] // bits, bits)
    return fields.astype(np.uint32) @ (np.uint32(1) << np.arange(bits, dtype=np.uint32))
