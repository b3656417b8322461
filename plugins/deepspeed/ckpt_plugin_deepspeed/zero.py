"""Each parameter of a ZeRO checkpoint rebuilt from the ranks' flat partitions, lazily.

Every rank's optimizer file holds, per parameter group, one flat fp32 tensor (its
partition of the master weights) and the Adam moments flat beside it. The rules are
DeepSpeed's own (``deepspeed/utils/zero_to_fp32.py``):

- ZeRO-1/2 (and BF16_Optimizer): the ranks' partitions, in rank order, make one vector
  per group; the group's parameters lie in it end to end in ``param_shapes`` order (plus
  ``param_alignment_paddings`` after each, when the file has them). The vector is padded at
  its end to a multiple of ``2 * world_size``. A parameter may straddle two ranks.
- ZeRO-3: each parameter of n elements takes ``ceil(n / world_size)`` elements of every
  rank's flat groups (concatenated), in ``param_shapes`` order; the parameter is those
  pieces in rank order, cut to n. Frozen parameters are split the same way in the
  model-states files' ``frozen_param_fragments``.

A parameter comes back as a Tensor over file ranges: one range when it lies in one rank's
file (copied kernel-side), a lazy concatenation of ranges where it straddles ranks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import attrs
from ckpt_core.errors import CorruptInput
from ckpt_core.tensor import Tensor

MOMENTS = ("exp_avg", "exp_avg_sq")


@attrs.frozen
class Piece:
    """``numel`` elements from ``start`` of rank ``rank``'s flat tensor of one group."""

    rank: int
    group: int
    start: int
    numel: int


def zero12_pieces(param_shapes: Sequence[dict], lengths: Sequence[Sequence[int]], world: int,
                  paddings: Sequence[Sequence[int]] | None, where: Path) -> dict[str, list[Piece]]:
    """Where each parameter lies in ZeRO-1/2 partitions (``lengths[rank][group]``: each
    rank's partition length)."""
    found = {}
    for g, shapes in enumerate(param_shapes):
        bounds = [0]
        for rank in range(world):
            bounds.append(bounds[-1] + lengths[rank][g])
        offset = 0
        pads = paddings[g] if paddings is not None else [0] * len(shapes)
        if len(pads) != len(shapes):
            raise CorruptInput(f"{where}: group {g} has {len(shapes)} parameters but {len(pads)} alignment paddings")
        for (name, shape), pad in zip(shapes.items(), pads):
            numel = math.prod(shape)
            found[name] = _cut(offset, numel, bounds, g, where)
            offset += numel + pad
        align = 2 * world
        if _round(offset, align) != _round(bounds[-1], align):
            raise CorruptInput(f"{where}: group {g}'s parameters take {offset} elements but the ranks' partitions hold "
                               f"{bounds[-1]} (a truncated or mismatched partition?)")
    return found


def zero3_pieces(param_shapes: Sequence[dict], lengths: Sequence[Sequence[int]], world: int,
                 where: Path) -> dict[str, list[Piece]]:
    """Where each parameter lies in ZeRO-3 partitions: ``ceil(n / world)`` elements of every
    rank's flat groups, in order (``lengths[rank][group]``)."""
    if any(list(lens) != list(lengths[0]) for lens in lengths):
        raise CorruptInput(f"{where}: the ranks' ZeRO-3 partitions differ in length ({[sum(x) for x in lengths]})")
    bounds = [0]
    for n in lengths[0]:
        bounds.append(bounds[-1] + n)
    found, offset = {}, 0
    for shapes in param_shapes:
        for name, shape in shapes.items():
            numel = math.prod(shape)
            part = -(-numel // world)
            pieces = []
            for rank in range(world):
                take = max(0, min(part, numel - rank * part))
                if take:
                    pieces += [attrs.evolve(p, rank=rank) for p in _cut(offset, take, bounds, None, where)]
            found[name] = pieces
            offset += part
    if offset != bounds[-1]:
        raise CorruptInput(f"{where}: the parameters take {offset} elements of each rank's partition, which holds "
                           f"{bounds[-1]} (a truncated or mismatched partition?)")
    return found


def _cut(offset: int, numel: int, bounds: Sequence[int], group: int | None, where: Path) -> list[Piece]:
    """The pieces of ``[offset, offset + numel)`` of a vector made of consecutive parts
    ending at ``bounds[1:]``: ranks of one group (ZeRO-1/2) or groups of one rank (ZeRO-3)."""
    pieces, end = [], offset + numel
    if end > bounds[-1]:
        raise CorruptInput(f"{where}: a parameter reaches element {end} of partitions that hold {bounds[-1]} "
                           "(a truncated or mismatched partition?)")
    for i in range(len(bounds) - 1):
        lo, hi = max(offset, bounds[i]), min(end, bounds[i + 1])
        if lo < hi:
            rank, g = (i, group) if group is not None else (0, i)
            pieces.append(Piece(rank, g, lo - bounds[i], hi - lo))
    return pieces


def _round(n: int, align: int) -> int:
    return align * -(-n // align)


def assemble(pieces: Sequence[Piece], flats: Sequence[Sequence[Tensor]], shape: tuple[int, ...]) -> Tensor:
    """The parameter ``pieces`` make of ``flats[rank][group]``, shaped."""
    parts = [flats[p.rank][p.group].slice(0, p.start, p.start + p.numel) for p in pieces]
    if not parts:
        return Tensor.from_bytes(b"", "F32", shape)
    return (parts[0] if len(parts) == 1 else Tensor.concat(parts)).reshape(shape)


def widened(t: Tensor) -> Tensor:
    """A 16-bit float tensor as fp32 (exact); any other as it is."""
    if t.dtype not in ("BF16", "F16"):
        return t
    return Tensor.from_loader("F32", t.shape, t.to_float32)


def split_frozen(fragments: Sequence[dict], shapes: dict, where: Path) -> dict[str, Tensor]:
    """ZeRO-3 frozen parameters: every rank's fragment in rank order, cut to the full size."""
    found = {}
    for name, shape in shapes.items():
        numel = math.prod(shape)
        parts, left = [], numel
        for frag in fragments:
            t = frag.get(name) if isinstance(frag, dict) else None
            if not isinstance(t, Tensor) or len(t.shape) != 1:
                raise CorruptInput(f"{where}: no frozen fragment of {name} in every rank's model states")
            take = min(left, t.shape[0])
            if take:
                parts.append(t.slice(0, 0, take))
            left -= take
        if left:
            raise CorruptInput(f"{where}: the ranks' fragments of frozen {name} hold {numel - left} of its {numel} elements")
        found[name] = (parts[0] if len(parts) == 1 else Tensor.concat(parts)).reshape(shape)
    return found
