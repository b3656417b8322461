"""Detecting the plugin's formats from a pickle's structure alone.

Only the zip directory and ``data.pkl`` are read (never tensor data, nothing executed):
the scanned structure gives the dict's keys and the tensors' names and shapes.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from ckpt_core.errors import CorruptInput
from ckpt_core.model import Detection

from . import pickle_scan
from .kinds import LORA_KEY, Unsupported, is_lora, kind_of, strip_prefix

DICT_CONFIDENCE = 0.9
BARE_CONFIDENCE = 0.8


def detect(path: Path) -> Detection | None:
    if not path.is_file() or not zipfile.is_zipfile(path):
        return None
    try:
        scan = pickle_scan.scan(path)
    except CorruptInput:
        return None
    obj = scan.obj
    if not isinstance(obj, dict):
        return None
    top, model = (obj, obj["model"]) if isinstance(obj.get("model"), dict) else ({}, obj)
    stubs = {k: v.shape for k, v in model.items() if isinstance(k, str) and isinstance(v, pickle_scan.TensorStub)}
    if not stubs or len(stubs) != len(model) or is_lora(top) or any(re.fullmatch(LORA_KEY, k) for k in stubs):
        return None
    prefix, keys = strip_prefix(stubs)
    shapes = dict(zip(keys, stubs.values()))
    try:
        kind = kind_of(shapes)
    except Unsupported as e:
        fmt = "nanogpt" if any(k.startswith("transformer.") for k in shapes) else "modded-nanogpt"
        return Detection(fmt, 0.5, f"{e}: recognised but not read by this plugin", path)
    if kind is None:
        return None
    what = f"{kind.upstream} dict" if top else f"bare {kind.upstream} state dict"
    how = f", {prefix!r} prefix" if prefix else ""
    unsafe = f"; needs {', '.join(scan.records)}" if scan.records else ""
    return Detection(kind.format, DICT_CONFIDENCE if top else BARE_CONFIDENCE,
                     f"{what} with {len(shapes)} tensors{how}{unsafe}", path)
