"""Optimizer state: an MLX optimizer's ``state`` tree, flattened into its own safetensors file.

``tree_flatten(optimizer.state)`` gives ``{param}.{slot}`` keys (Adam: ``layers.0.weight.m``,
``layers.0.weight.v``) and the optimizer's own arrays (``step``, ``learning_rate``). In
canonical form (keyed by parameter name, never by position):

    file key               canonical place
    {param}.{slot}         OptimizerState.param_state[param][slot]
    {key} (no parameter)   OptimizerState.extra["state"][key]     step, learning_rate, ...

so ``optimizer.state = tree_unflatten(mx.load(file))`` restores an MLX optimizer. The state
JSON records everything else (kind, groups, slots that are not arrays) and which key holds
which tensor, so state from other formats round-trips too. A file without that record
(the seed's unversioned state JSON) is split by the longest parameter name each key
starts with.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ckpt_core import tree
from ckpt_core.errors import CorruptInput
from ckpt_core.model import OptimizerState
from ckpt_core.tensor import Tensor

EXTRA_STATE = "state"
_PREFIXES = ("param_state.", f"extra.{EXTRA_STATE}.")


def from_flat(tensors: dict[str, Tensor], params: Collection[str]) -> OptimizerState:
    """An optimizer file read without a JSON record: keys split by parameter name."""
    params = set(params)
    param_state: dict[str, dict[str, Any]] = {}
    own: dict[str, Tensor] = {}
    for key, t in tensors.items():
        owner = _owner(key, params)
        if owner is None:
            own[key] = t
        else:
            param_state.setdefault(owner, {})[key[len(owner) + 1:]] = t
    return OptimizerState(param_state=param_state, extra={EXTRA_STATE: own} if own else {})


def _owner(key: str, params: set[str]) -> str | None:
    """The longest parameter name ``key`` starts with (followed by a dot)."""
    end = key.rfind(".")
    while end > 0:
        if key[:end] in params:
            return key[:end]
        end = key.rfind(".", 0, end)
    return None


def encode(opt: OptimizerState) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON record of ``opt`` and its tensors under their MLX file keys."""
    data, found = tree.encode({"kind": opt.kind, "param_state": opt.param_state, "groups": opt.groups,
                               "resumable": opt.resumable, "extra": opt.extra})
    keys: dict[str, str] = {}
    taken: set[str] = set()
    for name in found:
        key = next((name[len(p):] for p in _PREFIXES if name.startswith(p)), name)
        while key in taken:
            key += "'"
        keys[name] = key
        taken.add(key)
    return _renamed(data, keys), {keys[name]: t for name, t in found.items()}


def _renamed(data: Any, keys: dict[str, str]) -> Any:
    """``data`` with every tensor reference renamed by ``keys``."""
    if isinstance(data, list):
        return [_renamed(v, keys) for v in data]
    if isinstance(data, dict):
        if list(data) == ["__tensor__"]:
            return {"__tensor__": keys[data["__tensor__"]]}
        return {k: _renamed(v, keys) for k, v in data.items()}
    return data


def decode(data: Any, tensors: dict[str, Tensor], where: str) -> OptimizerState:
    """The OptimizerState of a JSON record and its file's tensors."""
    try:
        d = tree.decode(data, tensors)
        return OptimizerState(kind=d["kind"], param_state=d["param_state"], groups=d["groups"],
                              resumable=d["resumable"], extra=d["extra"])
    except KeyError as e:
        raise CorruptInput(f"{where}: optimizer record names no tensor or field {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise CorruptInput(f"{where}: malformed optimizer record ({type(e).__name__}: {e})") from None
