"""Torch's names for ckpt-core's dtypes (safetensors names): its dtype attributes and the
legacy storage classes it pickles tensors of the older dtypes with."""

from __future__ import annotations

from ..errors import CorruptInput

# safetensors dtype name -> torch dtype attribute name
TORCH_DTYPES = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "U16": "uint16", "I16": "int16", "F16": "float16",
    "BF16": "bfloat16", "U32": "uint32", "I32": "int32", "F32": "float32", "U64": "uint64", "I64": "int64",
    "F64": "float64", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
}

# The dtypes torch pickles with a legacy typed storage class (and ``_rebuild_tensor_v2``);
# the others get ``UntypedStorage`` and ``_rebuild_tensor_v3``, which names the dtype.
LEGACY_STORAGES = {
    "BOOL": "BoolStorage", "U8": "ByteStorage", "I8": "CharStorage", "I16": "ShortStorage", "F16": "HalfStorage",
    "BF16": "BFloat16Storage", "I32": "IntStorage", "F32": "FloatStorage", "I64": "LongStorage",
    "F64": "DoubleStorage", "C64": "ComplexFloatStorage",
}


def dtype_name(torch_dtype) -> str:
    """The safetensors name of a torch dtype; CorruptInput for one it has none for."""
    short = str(torch_dtype).removeprefix("torch.")
    for name, attr in TORCH_DTYPES.items():
        if attr == short:
            return name
    raise CorruptInput(f"torch dtype {short} has no safetensors equivalent")
