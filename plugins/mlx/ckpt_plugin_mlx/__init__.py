"""MLX step checkpoints (step_XXXXXX.safetensors + state JSON) for ckpt-core.

Besides the ``mlx`` format, a small API for MLX programs:

- ``tree_unflatten(flat)``: MLX's nested tree of flat dotted keys, without mlx.
- ``to_mlx(tensors)``: lazy Tensors as a nested tree of ``mx.array`` (imports mlx), for
  ``model.update(to_mlx(ck.tensors))`` or ``optimizer.state = to_mlx(...)``.
"""

from .nested import tree_unflatten


def to_mlx(tensors):
    """``{name: Tensor}`` as MLX's nested tree of ``mx.array`` (F8_E4M3 comes back as uint8)."""
    return tree_unflatten({name: t.to_mlx() for name, t in tensors.items()})


__all__ = ["to_mlx", "tree_unflatten"]
