"""Trees of plain values with tensors, between a torch pickle and ckpt-core.

A pickle holds dicts, lists, tuples, bytes and tensors natively (all of which
``weights_only`` loading allows); what it cannot hold as itself (an empty ``bytes``, keys
that are not plain) crosses as ``ckpt_core.tree`` JSON beside its tensors.
"""

from __future__ import annotations

import json
from typing import Any

from ckpt_core import tree


def native(value: Any) -> bool:
    """Whether a tree pickles as itself under ``weights_only`` loading (``b""`` does not:
    protocol 2 pickles it as a call of ``builtins.bytes``)."""
    if isinstance(value, (bytes, bytearray)):
        return len(value) > 0
    if isinstance(value, dict):
        return all(native(k) and native(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(native(v) for v in value)
    return True


def pack(value: Any) -> dict:
    """Any tree as JSON text plus its tensors (``ckpt_core.tree``'s lossless form)."""
    data, tensors = tree.encode(value)
    return {"json": json.dumps(data), "tensors": tensors}


def unpack(packed: Any) -> Any:
    """The inverse of ``pack``."""
    return tree.decode(json.loads(packed["json"]), packed["tensors"])
