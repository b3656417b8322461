"""TTT verification: which layers carry TTT blocks, and whether their tensors are all
there with the shapes the run config (``ttt.layers``) and the model size predict.

Shapes are those of the format note, with H heads, D head dim and W model width: H and D
default to the model's ``num_heads`` and ``dim // num_heads`` (the run config's
``ttt.num_heads`` / ``ttt.head_dim`` override them); ``ttt.layer_type`` "linear" has no
``W2`` / ``b2`` and a [H, D, D] ``W1``. The facts go to ``arch.params`` (inspect prints
them as hyper-parameters), each problem to a CkptWarning line.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

from ckpt_core import CkptWarning, CorruptInput

from .keys import ALIAS, TTT_LAYER, ttt_layers


def expected_shapes(h: int, d: int, w: int, kind: str = "mlp") -> dict[str, tuple[int, ...]]:
    """The TTT tensors of one layer (names under ``transformer.layers.{i}.ttt.``)."""
    inner = 4 * d if kind == "mlp" else d
    shapes = {"W1": (h, d, inner), "b1": (h, 1, inner)}
    if kind == "mlp":
        shapes.update({"W2": (h, inner, d), "b2": (h, 1, d)})
    for proj in ("wq", "wk", "wv", "wo"):
        shapes[f"{proj}.weight"] = (h * d, w)
        shapes[f"{proj}.bias"] = (h * d,)
    shapes.update({
        "learnable_ttt_lr_weight": (h, 1, w),
        "learnable_ttt_lr_bias": (h, 1),
        "ttt_norm_weight": (h, d),
        "ttt_norm_bias": (h, d),
        "post_norm.weight": (w,),
        "post_norm.bias": (w,),
        "forward_gating_alpha": (w,),
        "backward_gating_alpha": (w,),
    })
    return shapes


def layers_from_config(spec: Any, num_layers: int) -> list[int]:
    """The layers ``ttt.layers`` names: "all", "middle" (the middle half), "none", "1,5,10"."""
    if isinstance(spec, (list, tuple)):
        return sorted(int(i) for i in spec)
    text = str(spec).strip().lower()
    if text == "all":
        return list(range(num_layers))
    if text == "middle":
        return list(range(num_layers // 4, 3 * num_layers // 4))
    if text in ("none", ""):
        return []
    try:
        return sorted(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise CorruptInput(f"ttt.layers {spec!r}: expected all, middle, none or numbers like 1,5,10") from None


def verify(shapes: Mapping[str, tuple[int, ...]], config: Mapping[str, Any], ttt: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """TTT facts for ``arch.params`` and the problems found, from canonical tensor shapes
    (stored and tied names), the model config and the run config's ``ttt`` section."""
    found = sorted(ttt_layers(shapes))
    enabled = ttt is not None and ttt.get("enable", True) is not False and "layers" in ttt
    if not found and not enabled:
        return {}, []
    ttt = ttt or {}
    dim, heads = config.get("dim"), config.get("num_heads")
    h = ttt.get("num_heads", heads)
    d = ttt.get("head_dim", dim // h if isinstance(dim, int) and isinstance(h, int) and h else None)
    kind = str(ttt.get("layer_type", "mlp")).lower()
    expected_layers = layers_from_config(ttt["layers"], config.get("num_layers", 0)) if enabled else None
    per_layer = expected_shapes(h, d, dim, kind) if all(isinstance(x, int) for x in (h, d, dim)) else None
    problems = []
    if expected_layers is not None:
        problems += [f"TTT layer {i} expected by ttt.layers but has no TTT tensors" for i in expected_layers if i not in found]
        problems += [f"layer {i} has TTT tensors but ttt.layers does not name it" for i in found if i not in expected_layers]
    count = 0
    for name, shape in shapes.items():
        m = TTT_LAYER.match(name)
        if m and not ALIAS.match(name):
            count += 1
            rest = name[m.end():]
            if per_layer is not None and rest in per_layer and tuple(shape) != per_layer[rest]:
                problems.append(f"{name}: shape {list(shape)}, expected {list(per_layer[rest])}")
            elif per_layer is not None and rest not in per_layer:
                problems.append(f"{name}: not a TTT tensor of a {kind} TTT block")
    if per_layer is not None:
        for i in found:
            problems += [f"transformer.layers.{i}.ttt.{rest}: missing" for rest in per_layer
                         if f"transformer.layers.{i}.ttt.{rest}" not in shapes]
    facts = {"ttt_layers": found, "ttt_tensors": count}
    if expected_layers is not None:
        facts["ttt_layers_expected"] = expected_layers
        if per_layer is not None:
            facts["ttt_tensors_expected"] = len(expected_layers) * len(per_layer)
    return facts, problems


FACT_KEYS = ("ttt_layers", "ttt_tensors", "ttt_layers_expected", "ttt_tensors_expected")


def warn(problems: list[str], where: str) -> None:
    """Each problem as one CkptWarning line."""
    for problem in problems:
        warnings.warn(f"{where}: {problem}", CkptWarning, stacklevel=3)
