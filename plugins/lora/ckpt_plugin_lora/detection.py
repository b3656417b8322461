"""Cheap, safe detection: is this a LoRA ``ckpt.pt`` or a peft adapter directory?

A torch zip's ``data.pkl`` is scanned as opcodes (``pickletools``, nothing runs) for the
fork's marks: ``main_weight`` / ``lora_A`` keys or the LoRA ``model_args``. Only a file
that has them is opened further, through ``torchfile.load`` (the pickle's structure; no
tensor data is read), to name ranks and targets.
"""

from __future__ import annotations

import json
import pickletools
import re
import zipfile
from pathlib import Path

from ckpt_core import CkptError, Detection, files, jsonfile, torchfile

from . import forkfile, keys, peftdir

MAX_PICKLE = 64 * 1024 * 1024
MARKS = re.compile(r"(\.main_weight\.|\.lora_A\.weight\Z|\Aattn_lora_rank\Z|\Aembedding_mode\Z)")


def _pickle_strings(path: Path) -> set[str]:
    """The strings in a torch zip's ``data.pkl`` (empty for anything else)."""
    try:
        with files.open_regular(path) as f, zipfile.ZipFile(f) as z:
            pkls = [i for i in z.infolist() if i.filename.endswith("data.pkl")]
            if len(pkls) != 1 or pkls[0].file_size > MAX_PICKLE:
                return set()
            data = z.read(pkls[0])
        return {arg for _, arg, _ in pickletools.genops(data) if isinstance(arg, str)}
    except Exception:  # any damage: simply not ours
        return set()


def _describe(ck_top: dict, state: dict) -> str:
    """Ranks and targets, from the state dict's shapes and ``model_args``."""
    args = ck_top.get("model_args") or {}
    ranks: dict[str, list[int]] = {}
    for key, t in state.items():
        m = forkfile.LORA_KEY.match(key.removeprefix(forkfile.PREFIX))
        if m and key.endswith("lora_B.weight"):
            kind = keys.fork_target(m["m"]) or m["m"]
            ranks.setdefault("attn" if kind == "linear" else kind, []).append(t.shape[1])
    parts = [f"{target} rank {'/'.join(map(str, sorted(set(r))))} on {len(r)} module(s)" for target, r in ranks.items()]
    if "lora_alpha" in args:
        parts.append(f"alpha {args['lora_alpha']}")
    return ", ".join(parts)


def detect_fork(path: Path) -> Detection | None:
    strings = _pickle_strings(path)
    if not any(MARKS.search(s) for s in strings):
        return None
    try:
        top, state, variant = forkfile._parts(path, torchfile.load(path))
    except Exception:
        return Detection(forkfile.NAME, 0.3, "a torch pickle with LoRA key names that does not load", path)
    what = _describe(top, state)
    if variant == "lora":
        return Detection(forkfile.NAME, 0.95, f"nanoGPT LoRA fork checkpoint: {what or 'LoRA modules without adapters'}", path)
    if variant == "state_dict":
        return Detection(forkfile.NAME, 0.9, f"bare LoRA state dict: {what}", path)
    args = top.get("model_args") or {}
    if variant == "plain":
        return Detection(forkfile.NAME, 0.9, "nanoGPT LoRA fork checkpoint with LoRA off (rank 0, no adapters)", path)
    return Detection(forkfile.NAME, 0.95, f"nanoGPT LoRA fork checkpoint, merged (universal) save: attn rank "
                                          f"{args.get('attn_lora_rank')}, embedding {args.get('embedding_mode')} rank "
                                          f"{args.get('embedding_rank')}, adapters already merged", path)


def detect_peft(path: Path) -> Detection | None:
    if not path.is_dir():
        return None
    config_path = path / peftdir.CONFIG
    weights = [path / w for w in peftdir.WEIGHTS if (path / w).is_file()]
    if not config_path.is_file():
        return None
    try:
        config = json.loads(files.read_text(config_path, jsonfile.MAX_BYTES))
    except (CkptError, ValueError, UnicodeDecodeError, OSError, RecursionError):
        return Detection(peftdir.NAME, 0.3, f"{peftdir.CONFIG} is not valid JSON", path)
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        return None
    if not weights:
        return Detection(peftdir.NAME, 0.3, f"peft LoRA config without {' or '.join(peftdir.WEIGHTS)}", path)
    targets = config.get("target_modules")
    targets = ", ".join(targets) if isinstance(targets, list) else targets
    return Detection(peftdir.NAME, 0.95, f"peft LoRA adapter: r {config.get('r')}, alpha {config.get('lora_alpha')}, "
                                         f"targets {targets}, {weights[0].name}", path)
