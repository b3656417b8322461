"""Bounds on the shape of what a pickle unpickled to, checked before anything walks it.

A pickle can name one object many times (its memo), so a few KB can hold a list that
contains itself, lists nested 100,000 deep, or 60 levels of tuples each holding the one
before twice: 2**60 items to any walk that follows every reference. ``check`` refuses
those (CorruptInput) in time linear in the number of distinct objects: containers are
walked once each, iteratively. What passes has no cycle, at most ``MAX_DEPTH`` levels,
and at most ``budget`` items when every reference is followed, so the recursive walks
after it (converting to ckpt-core trees, plugins' readers) are bounded too.
"""

from __future__ import annotations

from typing import Any

from ..errors import CorruptInput

MAX_DEPTH = 100  # real checkpoints nest a few levels; Python's recursion limit is 1000


def budget(pickle_bytes: int) -> int:
    """Items (counted along every reference) a pickle of that many bytes may hold: each
    item of a pickle without shared containers costs at least a byte, so four per byte
    leaves room for honest sharing (a config named twice) and none for a bomb."""
    return 4 * pickle_bytes + 100_000


# Types that hold nothing: a walk counts them without looking at them.
_ATOMS = frozenset({str, bytes, int, float, bool, complex, type(None)})


def _children(value: Any, inert: type | None) -> list | None:
    """The items a container holds (dict keys and values; an inert record's arguments and
    state), None for anything else."""
    if isinstance(value, dict):
        return [*value.keys(), *value.values()]
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if inert is not None and isinstance(value, inert):
        return [*value.args, value.state]
    return None


def check(root: Any, path, limit: int, leaves: tuple[type, ...] = (), inert: type | None = None) -> None:
    """CorruptInput unless ``root`` (unpickled from ``path``) has no cycle, nests at most
    ``MAX_DEPTH`` deep and holds at most ``limit`` items counted along every reference.
    ``leaves``: types not to look into (tensor stubs, which are tuples); ``inert``: the
    scanner's Record type, if any."""
    atoms = _ATOMS | set(leaves)
    total: dict[int, int] = {}  # id -> items under a container already walked
    on_path: set[int] = set()

    def frame(node: Any, items: list) -> tuple:
        """A container to walk: itself, its items that may hold more, and its count so far
        (itself and its atoms)."""
        inner = [item for item in items if type(item) not in atoms]
        on_path.add(id(node))
        return node, iter(inner), [1 + len(items) - len(inner)]

    items = None if type(root) in atoms else _children(root, inert)
    if items is None:
        return
    stack = [frame(root, items)]
    while stack:
        node, todo, count = stack[-1]
        child = next(todo, stack)  # the stack itself marks the end: it is never an item
        if child is stack:
            _within(count[0], limit, path)
            stack.pop()
            on_path.discard(id(node))
            total[id(node)] = count[0]
            if stack:
                stack[-1][2][0] += count[0]
            continue
        if id(child) in total:
            count[0] += total[id(child)]
        elif id(child) in on_path:
            raise CorruptInput(f"{path}: the pickle holds a container that contains itself; not a checkpoint")
        else:
            items = _children(child, inert)
            if items is None:
                count[0] += 1
            elif len(stack) >= MAX_DEPTH:
                raise CorruptInput(f"{path}: the pickle nests containers more than {MAX_DEPTH} deep; not a checkpoint")
            else:
                stack.append(frame(child, items))
        _within(count[0], limit, path)


def _within(count: int, limit: int, path) -> None:
    if count > limit:
        raise CorruptInput(f"{path}: the pickle's shared parts expand to more than {limit:,} items "
                           "(a few bytes naming the same containers over and over); not a checkpoint")
