"""Family schemas: a model family's canonical tensor names and shapes, as data.

A schema lists tensor rules (a name pattern where ``{i}`` is a layer number, and a shape
written over hyper-parameters such as ``("3*d_model", "d_model")``), and which
hyper-parameters derive from which tensor dimension. From that the core derives a
checkpoint's hyper-parameters, recognises a family from bare tensor names, and validates a
checkpoint against its family.
"""

from __future__ import annotations

import ast
import functools
import operator
import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import CorruptInput


# Placeholders for numbers that are not layer numbers (a codebook, a per-step weight, a
# second stack's layer): they match any number and never count towards ``n_layer``.
OTHER_INDEXES = ("{j}", "{k}")


@attrs.frozen
class TensorRule:
    """Tensors whose names match ``pattern`` (``{i}``: layer number; ``{j}``, ``{k}``: any
    other number) and their shape.

    ``shape`` entries are ints or expressions over hyper-parameters; None accepts any shape.
    A required per-layer rule must match for every layer in ``range(n_layer)``.
    """

    pattern: str
    shape: tuple[int | str, ...] | None
    required: bool = True

    @property
    def regex(self) -> re.Pattern:
        return _regex(self.pattern)

    @property
    def prefix(self) -> str:
        """The pattern's literal start: a name without it cannot match (tested before the regex)."""
        return self.pattern.partition("{")[0]


@functools.cache  # recognising a family matches every name against every rule: build each once
def _regex(pattern: str) -> re.Pattern:
    text = re.escape(pattern).replace(re.escape("{i}"), r"(\d+)")
    for index in OTHER_INDEXES:
        text = text.replace(re.escape(index), r"\d+")
    return re.compile(text + r"\Z")


@attrs.frozen
class FamilySchema:
    """A model family: tensor rules, derivable hyper-parameters and required params.

    ``derive`` maps a hyper-parameter to ``(tensor name, axis)``; the tensor name may use
    ``{i}``, filled with the first layer that has it. ``n_layer`` always derives from the
    largest layer number seen.
    """

    name: str
    description: str
    tensors: tuple[TensorRule, ...]
    derive: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    required_params: tuple[str, ...] = ()

    def rule_for(self, name: str) -> tuple[TensorRule, int | None] | None:
        """The rule ``name`` matches and its layer number, or None."""
        for rule in self.tensors:
            m = name.startswith(rule.prefix) and rule.regex.match(name)
            if m:
                return rule, int(m.group(1)) if m.groups() else None
        return None

    def derive_params(self, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Any]:
        """Hyper-parameters read off tensor shapes (``n_layer`` and ``derive``)."""
        params: dict[str, Any] = {}
        layers = [m[1] for m in map(self.rule_for, shapes) if m and m[1] is not None]
        if layers:
            params["n_layer"] = max(layers) + 1
        for param, (pattern, axis) in self.derive.items():
            rule = TensorRule(pattern, None)
            for name, shape in shapes.items():
                if rule.regex.match(name) and len(shape) > axis:
                    params[param] = shape[axis]
                    break
        return params

    def problems(self, shapes: Mapping[str, tuple[int, ...]], params: Mapping[str, Any],
                 complete: bool = True) -> list[str]:
        """What keeps tensors of these shapes from being this family (empty: none).
        ``complete`` False: a part of a model (adapters without their base), so only the
        names and shapes present are checked, not what is missing."""
        found: list[str] = []
        params = {**self.derive_params(shapes), **params}
        seen: dict[TensorRule, set] = {}
        for name, shape in shapes.items():
            match = self.rule_for(name)
            if match is None:
                found.append(f"{name}: not a {self.name} tensor")
                continue
            rule, layer = match
            seen.setdefault(rule, set()).add(layer)
            expected = expected_shape(rule.shape, params)
            if expected is not None and tuple(shape) != expected:
                found.append(f"{name}: shape {list(shape)}, {self.name} expects {list(expected)}")
        if not complete:
            return found
        n_layer = params.get("n_layer", 0)
        if not isinstance(n_layer, int):
            found.append(f"hyper-parameter n_layer is {n_layer!r}, not a number of layers")
            n_layer = 0
        for rule in self.tensors:
            if not rule.required:
                continue
            if "{i}" in rule.pattern:
                layers = seen.get(rule, set())
                missing = next((i for i in range(n_layer) if i not in layers), None)  # never lists 2**64 layers
                if missing is not None:
                    found.append(f"{rule.pattern.replace('{i}', str(missing))}: missing")
            elif rule not in seen:
                found.append(f"{rule.pattern}: missing")
        found += [f"hyper-parameter {p!r} missing" for p in self.required_params if p not in params]
        return found


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def _eval(expr: int | str, params: Mapping[str, Any]) -> int | None:
    """Value of a shape expression (ints, names, + - * //); None if a name is unknown."""
    if isinstance(expr, int):
        return expr

    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name):
            value = params.get(node.id)
            if not isinstance(value, int):
                raise LookupError(node.id)
            return value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise ValueError(f"bad shape expression {expr!r}")

    try:
        return walk(ast.parse(expr, mode="eval").body)
    except LookupError:
        return None


def expected_shape(shape, params) -> tuple[int, ...] | None:
    """A rule's shape at these hyper-parameters; None when it accepts any, or a name is unknown."""
    if shape is None:
        return None
    dims = [_eval(d, params) for d in shape]
    return None if any(d is None for d in dims) else tuple(dims)


def recognise(schemas: Iterable[FamilySchema], shapes: Mapping[str, tuple[int, ...]]) -> FamilySchema | None:
    """The one schema these tensors fit with no problems, or None."""
    # a name the schema has no rule for rules it out: checked first, it spares the full check
    fits = [s for s in schemas if shapes and all(map(s.rule_for, shapes)) and not s.problems(shapes, {})]
    return fits[0] if len(fits) == 1 else None


def check(schema: FamilySchema, checkpoint) -> None:
    """Raise CorruptInput when a checkpoint does not fit its family's schema (adapters
    without their base: the tensors it names must fit, the rest of the model is not there)."""
    shapes = {name: checkpoint.tensor(name).shape for name in checkpoint.names()}
    found = schema.problems(shapes, checkpoint.arch.params, complete=not checkpoint.absent_names())
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CorruptInput(f"not a valid {schema.name} checkpoint: {found[0]}{more}")
