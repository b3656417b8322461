"""Lossless JSON for the trees a checkpoint carries beside its weights.

Training state, run configs, layouts and extras are nested dicts and lists of plain values,
but real files also hold tensors (a 0-d ``best_val_loss``, optimizer moments, RNG states),
tuples, bytes and dicts keyed by integers (optimizer state by parameter index). ``encode``
turns such a tree into JSON-safe data plus a flat ``{name: Tensor}`` table (the caller
stores those in safetensors); ``decode`` turns them back, exactly.

Tagged forms (a dict with one ``"__kind__"`` key): ``{"__tensor__": name}``,
``{"__tuple__": [...]}``, ``{"__bytes__": base64}``, ``{"__dict__": [[key, value], ...]}``
for dicts whose keys are not all strings (or would clash with a tag).
"""

from __future__ import annotations

import base64
from typing import Any

from .tensor import Tensor

_TAGS = ("__tensor__", "__tuple__", "__bytes__", "__dict__")


def encode(tree: Any, prefix: str = "") -> tuple[Any, dict[str, Tensor]]:
    """JSON-safe form of ``tree`` and the tensors it referenced, named by their path."""
    tensors: dict[str, Tensor] = {}
    names: dict[int, str] = {}  # id(tensor) -> name: a tensor referenced twice is stored once

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, Tensor):
            if id(value) not in names:
                name = path
                while name in tensors:
                    name += "'"
                tensors[name] = value
                names[id(value)] = name
            return {"__tensor__": names[id(value)]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (bytes, bytearray)):
            return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, _join(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, _join(path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            plain = all(isinstance(k, str) for k in value) and not (len(value) == 1 and next(iter(value)) in _TAGS)
            if plain:
                return {k: walk(v, _join(path, k)) for k, v in value.items()}
            return {"__dict__": [[walk(k, _join(path, f"key{i}")), walk(v, _join(path, k))] for i, (k, v) in enumerate(value.items())]}
        raise TypeError(f"{path or 'value'}: cannot store {type(value).__name__} losslessly")

    return walk(tree, prefix), tensors


def _join(path: str, key) -> str:
    return f"{path}.{key}" if path else str(key)


def decode(data: Any, tensors: dict[str, Tensor]) -> Any:
    """The tree ``encode`` was given, from its JSON form and the stored tensors."""
    if isinstance(data, list):
        return [decode(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1:
        (tag, inner), = data.items()
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__tuple__":
            return tuple(decode(v, tensors) for v in inner)
        if tag == "__bytes__":
            return base64.b64decode(inner)
        if tag == "__dict__":
            return {_hashable(decode(k, tensors)): decode(v, tensors) for k, v in inner}
    return {k: decode(v, tensors) for k, v in data.items()}


def _hashable(key: Any) -> Any:
    if isinstance(key, list):
        return tuple(_hashable(k) for k in key)
    return key
