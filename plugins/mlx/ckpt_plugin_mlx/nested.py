"""MLX's nested parameter trees in pure Python: flat dotted keys to nested dicts and lists.

The same rule as ``mlx.utils.tree_unflatten``, without needing mlx: a level whose keys are
all integers becomes a list (gaps filled with ``{}``), anything else a dict. So
``model.update(tree_unflatten(weights))`` loads a flat step file into an MLX model, and
``optimizer.state = tree_unflatten(state)`` restores an optimizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def tree_unflatten(items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> Any:
    """The nested tree of ``items`` (``{"layers.0.weight": w}`` -> ``{"layers": [{"weight": w}]}``)."""
    pairs = list(items.items() if isinstance(items, Mapping) else items)
    if len(pairs) == 1 and pairs[0][0] == "":
        return pairs[0][1]
    children: dict[str, list[tuple[str, Any]]] = {}
    for key, value in pairs:
        head, _, rest = key.partition(".")
        children.setdefault(head, []).append((rest, value))
    try:
        numbers = {int(k): k for k in children}
    except ValueError:
        numbers = None
    if numbers is None or len(numbers) != len(children):  # "01" and "1" are not one list slot
        return {k: tree_unflatten(v) for k, v in children.items()}
    out: list[Any] = []
    for i, k in sorted(numbers.items()):
        out.extend({} for _ in range(i - len(out)))
        out.append(tree_unflatten(children[k]))
    return out
