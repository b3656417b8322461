"""Crossing between the gpt (nanoGPT) and modded-gpt families, by the GPT_TO_MODDED table.

The tensors that map are renamed and split or joined exactly (c_attn rows <-> q, k, v);
the rest keep their names, so the target layout refuses them by name (or drops them
when asked). What the target family needs and the source lacks is created only when
asked (``fill_missing``), as neutral values: for nanoGPT, LayerNorm weights 1, ``wpe``
and the attention of layers that have none 0; for modded-nanogpt, ``scalars`` that add
no skip connection and no x0 or value-embedding mix. Optimizer state keyed by the old parameters cannot follow. Either way the
two families compute differently, and a warning says so.
"""

from __future__ import annotations

import re
import warnings

import attrs

from ckpt_core.errors import CkptWarning, LossyConversion, UsageError
from ckpt_core.gpt import GPT
from ckpt_core.model import Arch, Checkpoint
from ckpt_core.tensor import Tensor

from . import layouts, params
from .reading import DIFFERENT, untie

def to_family(ck: Checkpoint, family: str, fill: bool, block_size) -> tuple[Checkpoint, bool]:
    """``ck`` in ``family`` (itself when it is already), and whether its optimizer state was
    left behind (it is keyed by the source family's parameters; the caller refuses or warns)."""
    if ck.arch.family == family:
        return ck, False
    if {ck.arch.family, family} != {"gpt", "modded-gpt"}:
        raise LossyConversion(f"family {ck.arch.family!r} does not map onto {family!r}. Nothing was written.")
    warnings.warn(f"{DIFFERENT}: converting {ck.arch.family} to {family} keeps the weights, not what they compute",
                  CkptWarning, stacklevel=3)
    ts = ck.train_state
    lost_optimizer = ts is not None and ts.optimizer is not None
    if lost_optimizer:
        ts = attrs.evolve(ts, optimizer=None)
    named = {name: ck.tensor(name) for name in ck.names()}
    known = {"n_head": ck.arch.params["n_head"]} if "n_head" in ck.arch.params else {}
    if family == "modded-gpt":
        mapped, rest = layouts.forward(named, layouts.GPT_TO_MODDED)
        if fill:
            mapped = _fill_modded(mapped)
        mapped.update((n, named[n]) for n in rest)
        shapes = {n: t.shape for n, t in mapped.items()}
        arch_params = {**params.modded_params(shapes, "qkv"), **known}
    else:
        mapped, rest = layouts.backward(named, layouts.GPT_TO_MODDED)
        wte, head = mapped.get("transformer.wte.weight"), mapped.get("lm_head.weight")
        if wte is not None and head is not None and wte.shape != head.shape:
            raise LossyConversion(f"embed.weight is {list(wte.shape)} and lm_head.weight {list(head.shape)}; the gpt family "
                                  "needs one vocabulary size for both. Nothing was written.")
        mapped = _ordered_gpt(_fill_gpt(mapped, ck, fill, block_size))
        mapped.update((n, named[n]) for n in rest)
        shapes = {n: t.shape for n, t in mapped.items()}
        arch_params = params.gpt_params(shapes, params.model_args({**params.gpt_params(shapes, None), **known}))
    tensors, ties = untie(mapped)
    return ck.evolve(arch=Arch(family, arch_params), tensors=tensors, ties=ties, train_state=ts), lost_optimizer


def _fill_gpt(mapped: dict[str, Tensor], ck: Checkpoint, fill: bool, block_size) -> dict[str, Tensor]:
    """``mapped`` with the tensors a nanoGPT model needs and modded-gpt has not."""
    shapes = {n: t.shape for n, t in mapped.items()}
    found = GPT.derive_params(shapes)
    n_layer, d = found.get("n_layer", 0), found.get("d_model")
    needed = {"transformer.ln_f.weight": (d,)}
    for i in range(n_layer):
        needed.update({f"transformer.h.{i}.ln_1.weight": (d,), f"transformer.h.{i}.ln_2.weight": (d,)})
        if f"transformer.h.{i}.attn.c_attn.weight" not in mapped:
            needed.update({f"transformer.h.{i}.attn.c_attn.weight": (3 * d, d), f"transformer.h.{i}.attn.c_proj.weight": (d, d)})
    block_size = block_size if block_size is not None else ck.arch.params.get("block_size")
    missing = [n for n in needed if n not in mapped]
    if not fill:
        raise LossyConversion(f"the gpt family needs {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}, which "
                              "modded-gpt does not have; pass --option fill_missing=true (with --option block_size=N for wpe) "
                              "to create them: LayerNorm weights 1, wpe and absent attention 0. Nothing was written.")
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size <= 0:
        raise UsageError("fill_missing creates transformer.wpe.weight and needs its rows: pass --option block_size=N")
    needed["transformer.wpe.weight"] = (block_size, d)
    import numpy as np

    out = dict(mapped)
    for name, shape in needed.items():
        if name not in out:
            value = 1.0 if re.search(r"ln_\w+\.weight$", name) else 0.0
            out[name] = Tensor.from_numpy(np.full(shape, value, np.float32))
    return out


def _fill_modded(mapped: dict[str, Tensor]) -> dict[str, Tensor]:
    """``mapped`` with the ``scalars`` a modded-nanogpt model needs, set so that its blocks
    add no skip connection and mix in no x0 or value embedding: skip weights 0, block
    lambdas (1, 0), attention lambdas (1, 0)."""
    if "scalars" in mapped:
        return mapped
    import numpy as np

    n_layer = max((int(m.group(1)) + 1 for n in mapped if (m := re.match(r"blocks\.(\d+)\.", n))), default=0)
    values = np.concatenate([np.zeros(n_layer), np.tile([1.0, 0.0], 2 * n_layer)]).astype(np.float32)
    return {"scalars": Tensor.from_numpy(values), **mapped}


def _ordered_gpt(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` in nanoGPT's state-dict order (by the gpt schema's rules, layer by layer)."""
    def rank(item):
        name = item[0]
        match = GPT.rule_for(name)
        if match is None:
            return (3, 0, 0)
        rule, layer = match
        index = GPT.tensors.index(rule)
        if layer is not None:
            return (1, layer, index)
        return (0 if index < 2 else 2, 0, index)

    return dict(sorted(tensors.items(), key=rank))
