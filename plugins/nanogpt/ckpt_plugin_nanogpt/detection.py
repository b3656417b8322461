"""Detecting the plugin's formats from a pickle's structure alone.

Only the zip directory and ``data.pkl`` are read (never tensor data, nothing executed):
the scanned structure gives the dict's keys and the tensors' names and shapes.
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_core import torchfile
from ckpt_core.errors import CorruptInput
from ckpt_core.model import Detection
from ckpt_core.torchfile import is_zip

from .kinds import LORA_KEY, Unsupported, is_lora, kind_of, strip_prefix

DICT_CONFIDENCE = 0.9
BARE_CONFIDENCE = 0.8
# A .pt file that nothing reads by its structure (damaged, a legacy non-zip pickle, or one
# that needs code to load) is claimed weakly, so that reading it says what is wrong with
# it instead of "no format recognises it".
FALLBACK_CONFIDENCE = 0.1
TORCH_SUFFIXES = (".pt", ".pth")


def detect(path: Path) -> Detection | None:
    if not path.is_file():
        return None
    if not is_zip(path):
        return _fallback(path, "not a torch zip archive: a legacy torch pickle, or a damaged file")
    try:
        scan = torchfile.scan(path)
    except CorruptInput as e:
        return _fallback(path, str(e))
    obj = scan.obj
    if not isinstance(obj, dict) or (scan.records and not _has_tensors(obj)):
        needs = f"needs {', '.join(scan.records)} to load" if scan.records else "holds no state dict"
        return _fallback(path, f"a torch pickle that {needs}")
    top, model = (obj, obj["model"]) if isinstance(obj.get("model"), dict) else ({}, obj)
    stubs = {k: v.shape for k, v in model.items() if isinstance(k, str) and isinstance(v, torchfile.TensorStub)}
    if scan.records and len(stubs) != len(model):  # claimed, so that loading names what the model needs
        return _fallback(path, f"a torch pickle whose model needs {', '.join(scan.records)} to load")
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


def _fallback(path: Path, why: str) -> Detection | None:
    if path.suffix not in TORCH_SUFFIXES:
        return None
    return Detection("nanogpt", FALLBACK_CONFIDENCE, f"{why}; not recognised as a nanoGPT checkpoint", path)


def _has_tensors(obj: dict) -> bool:
    model = obj.get("model", obj)
    return isinstance(model, dict) and any(isinstance(v, torchfile.TensorStub) for v in model.values())
