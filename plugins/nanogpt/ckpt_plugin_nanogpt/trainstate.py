"""Training state: nanoGPT's AdamW state by parameter name, and plain-data trees.

nanoGPT's ``optimizer`` is ``AdamW.state_dict()``: state and param groups keyed by
position. ``ckpt_core.gpt.adamw_param_order`` gives the parameter behind each position
(the order ``configure_optimizers`` uses), so the state is keyed by canonical names here and
numbered again on writing. Trees from pickles become ckpt-core trees (lazy Tensors).
"""

from __future__ import annotations


from ckpt_core.errors import CorruptInput
from ckpt_core.gpt import adamw_param_order
from ckpt_core.model import OptimizerState
from ckpt_core.tensor import Tensor

ADAMW = "adamw"
BUFFER_SUFFIXES = (".attn.bias", ".attn.rotary_emb.inv_freq")  # registered buffers, not parameters


def parameter_order(tensors: dict[str, Tensor]) -> list[str]:
    """The names in nanoGPT's AdamW positional order (tied aliases are not in ``tensors``)."""
    params = [(name, len(t.shape)) for name, t in tensors.items() if not name.endswith(BUFFER_SUFFIXES)]
    return adamw_param_order(params)


def adamw_by_name(state: dict, tensors: dict[str, Tensor], where: str) -> OptimizerState:
    """nanoGPT's positional AdamW ``state_dict`` keyed by canonical names; CorruptInput
    when it does not fit the model (another parameter count, or shapes that differ)."""
    order = parameter_order(tensors)
    try:
        groups, slots = state["param_groups"], state["state"]
        positions = [i for g in groups for i in g["params"]]
    except (KeyError, TypeError) as e:
        raise CorruptInput(f"{where}: optimizer is not an optimizer state_dict ({type(e).__name__}: {e})") from None
    if sorted(positions) != list(range(len(order))):
        raise CorruptInput(f"{where}: optimizer state covers {len(positions)} parameters, the model has {len(order)}")
    param_state = {}
    for index, values in slots.items():
        if not isinstance(index, int) or not 0 <= index < len(order):
            raise CorruptInput(f"{where}: optimizer state for parameter #{index!r}, which the model does not have")
        name = order[index]
        for slot, value in values.items():
            if isinstance(value, Tensor) and value.shape not in ((), tensors[name].shape):
                raise CorruptInput(f"{where}: optimizer {slot} of {name} has shape {list(value.shape)}, "
                                   f"the parameter {list(tensors[name].shape)}")
        param_state[name] = values
    named_groups = [{k: ([order[i] for i in v] if k == "params" else v) for k, v in g.items()} for g in groups]
    return OptimizerState(ADAMW, param_state, named_groups)


def adamw_by_position(opt: OptimizerState, tensors: dict[str, Tensor]) -> dict | None:
    """The inverse of ``adamw_by_name``; None when ``opt`` is not such a state of this model."""
    order = parameter_order(tensors)
    index = {name: i for i, name in enumerate(order)}
    if opt.kind != ADAMW or not opt.resumable or opt.extra or not opt.groups:
        return None
    if not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt.groups):
        return None
    if [n for g in opt.groups for n in g["params"]] != order or not set(opt.param_state) <= set(index):
        return None
    if not all(isinstance(v, dict) for v in opt.param_state.values()):
        return None
    return {
        "state": {index[name]: values for name, values in opt.param_state.items()},
        "param_groups": [{k: ([index[n] for n in v] if k == "params" else v) for k, v in g.items()} for g in opt.groups],
    }


def optimizer_as_tree(opt: OptimizerState) -> dict:
    """An OptimizerState as plain data (for a file that has no native slot for it)."""
    return {"kind": opt.kind, "param_state": opt.param_state, "groups": opt.groups,
            "resumable": opt.resumable, "extra": opt.extra}
