"""float32 -> BF16 rounding (``dtypes.from_float32``): to nearest, ties to even, NaNs kept NaN,
for every exponent and sign and the rounding boundaries of the dropped half, against the
same rule in 64-bit integers, where nothing wraps."""

from __future__ import annotations

import numpy as np

from ckpt_core import dtypes


def test_bf16_rounding_is_nearest_even_for_every_high_half():
    high = np.arange(1 << 16, dtype=np.uint64) << 16
    low = np.array([0, 1, 0x4000, 0x7FFF, 0x8000, 0x8001, 0xC000, 0xFFFF], dtype=np.uint64)
    words = np.concatenate([(high[:, None] | low[None, :]).reshape(-1),
                            np.random.default_rng(0).integers(0, 2**32, 1_000_000, dtype=np.uint64)])
    values = words.astype(np.uint32).view(np.float32)
    want = ((words + 0x7FFF + ((words >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(values)
    want[nan] = ((words[nan] >> 16) | 0x40).astype(np.uint16)
    np.testing.assert_array_equal(dtypes.from_float32(values, "BF16"), want)
