"""config.json <-> the canonical checkpoint: what is derived, what is carried.

The writer derives config.json from canonical facts: ``model_type`` and ``architectures``
from the family (and whether it writes a student), the hyper-parameters (``CONFIG_KEYS``),
``tie_word_embeddings`` from the tie, ``dtype`` (and an older file's ``torch_dtype``) from
the embedding's dtype (so a cast checkpoint loads as what it is), the SwiftKV fields from the student's plan, and any
other hyper-parameter under ``ckpt_core_arch``. The reader keeps, in the checkpoint's
``extra``, exactly the fields whose value differs from what would be derived (sorted by
key), so that writing them over the derived ones gives the same config back, and a
checkpoint that never had a config.json gains none in ``extra``.
"""

from __future__ import annotations

import json
from typing import Any

from ckpt_core import Checkpoint, LossyConversion, tree
from ckpt_core.torchfile import TORCH_DTYPES

from . import swiftkv
from .families import CONFIG_KEYS, MODEL_TYPES

ARCH_KEY = "ckpt_core_arch"
EMBED, LM_HEAD = "model.embed_tokens.weight", "lm_head.weight"
TIE = {LM_HEAD: EMBED}


def params_from_config(config: dict) -> dict[str, Any]:
    """Canonical hyper-parameters stated by a config.json."""
    params = {canon: config[key] for canon, key in CONFIG_KEYS.items() if key in config}
    if isinstance(config.get(ARCH_KEY), (dict, list)):
        params.update(tree.decode(config[ARCH_KEY], {}))
    return ordered(params)


def ordered(params: dict[str, Any]) -> dict[str, Any]:
    """Hyper-parameters in one order (config.json has its own): ``CONFIG_KEYS``, then
    SwiftKV's, then the rest by name."""
    rank = {name: i for i, name in enumerate([*CONFIG_KEYS, *swiftkv.A_PARAMS])}
    return dict(sorted(params.items(), key=lambda kv: (rank.get(kv[0], len(rank)), str(kv[0]))))


def derived(ck: Checkpoint, plan: swiftkv.Plan | None) -> dict[str, Any]:
    """The config.json fields that follow from ``ck`` (a student's when ``plan`` is given)."""
    model_type, teacher_arch, student_arch = MODEL_TYPES[ck.arch.family]
    out: dict[str, Any] = {
        "model_type": model_type + "_swiftkv" if plan else model_type,
        "architectures": [student_arch if plan else teacher_arch],
        "tie_word_embeddings": ck.ties == TIE,
    }
    weights = ck.tensors.get(EMBED) or next(iter(ck.tensors.values()), None)
    if weights is not None:
        out["dtype"] = TORCH_DTYPES[weights.dtype]
    params = dict(ck.arch.params)
    for canon, key in CONFIG_KEYS.items():
        if canon in params:
            out[key] = params.pop(canon)
    if plan is not None:
        for p in swiftkv.A_PARAMS:
            params.pop(p, None)
        out.update(plan.config())
    if params:
        encoded, tensors = tree.encode(params)
        if tensors:
            raise LossyConversion(f"hyper-parameters hold tensors ({', '.join(tensors)}), which config.json cannot keep; "
                                  "convert to canonical instead. Nothing was written.")
        out[ARCH_KEY] = encoded
    return out


def carried(config: dict, derived_fields: dict) -> dict[str, Any]:
    """The fields of ``config`` that ``derived_fields`` does not reproduce, sorted by key."""
    return {k: v for k, v in sorted(config.items()) if k not in derived_fields or not _same(v, derived_fields[k])}


def build(derived_fields: dict, carried_fields: dict, teacher: bool) -> dict:
    """config.json: carried fields over derived ones. A teacher keeps no SwiftKV field and no
    SwiftKV model type or architecture (which a student read as ``hf`` carries)."""
    if teacher:
        carried_fields = {k: v for k, v in carried_fields.items()
                          if k not in swiftkv.CONFIG_FIELDS
                          and not (k in ("model_type", "architectures") and "swiftkv" in str(v).lower())}
    config = {**derived_fields, **carried_fields}
    if "torch_dtype" in config and "dtype" in derived_fields:
        config["torch_dtype"] = config["dtype"] = derived_fields["dtype"]
    return config


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)
