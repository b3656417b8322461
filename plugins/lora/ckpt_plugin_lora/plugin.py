"""The ckpt-core hooks of ckpt-plugin-lora: formats ``lora-nanogpt`` and ``peft``.

``lora-nanogpt`` holds the core's ``gpt`` family, ``peft`` that and the Llama / Mistral /
Qwen families, with adapters as edges, never merged unless asked with the core's
``--merge-adapters`` (``--option tied_head=tie`` keeps a tied head tied, merged too).
Options that change the adapters (``rank``, ``targets``, ``rank_change``) apply when
writing ``lora-nanogpt``; when they change the parameter set, optimizer state is dropped
with a one-line warning, as the fork itself does.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import attrs

from ckpt_core import Checkpoint, CkptWarning, FormatSpec, UsageError, hookimpl
from ckpt_core.torchfile import VERIFY_OPTION, check_archive

from . import detection, edit, forkfile, peftdir

FORK_SPEC = FormatSpec(
    name=forkfile.NAME,
    description="the nanoGPT LoRA fork's ckpt.pt: main_weight + lora_A/lora_B state dict, or its merged universal save",
    families=("gpt",),
    capabilities=frozenset({"adapters", "ties", "train_state", "optimizer_state"}),
    patterns=("ckpt.pt", "*.pt"),
    options={
        "merge": "removed: merge with --merge-adapters",
        "tied_head": "with --merge-adapters or rank_change=merge: untie (default: the tied head keeps the unmerged "
                     "weight, as the LoRA model computes) or tie (tie kept, head merged too)",
        "rank": "writing: adapters of this rank (fresh ones on a plain model; a LoRA model needs rank_change)",
        "targets": "with rank: attn, embedding or attn,embedding (default: the existing adapters, else attn)",
        "alpha": "lora_alpha of fresh adapters (default 1.0); reading a bare state dict: its lora_alpha",
        "rank_change": "pad (exact: zero-pads A and B, alpha rescaled, same outputs) or merge (merges the old "
                       "adapters in float32, then fresh ones)",
        "init": "fresh A matrices: kaiming (uniform, the fork's default) or normal",
        "seed": "seed of the fresh adapters (default 0; the same seed gives the same bytes)",
        **VERIFY_OPTION,
    },
)

PEFT_SPEC = FormatSpec(
    name=peftdir.NAME,
    description="a Hugging Face peft LoRA adapter directory on GPT-2, Llama, Mistral, Qwen2 or Qwen3 "
                "(adapter_config.json + adapter_model.safetensors)",
    families=peftdir.FAMILIES,
    capabilities=frozenset({"adapters", "adapters_alone", "ties"}),
    patterns=(peftdir.CONFIG, *peftdir.WEIGHTS),
    options={
        "base": "the base model (an HF directory or any checkpoint; without it and base_model/, the adapters are read "
                "alone); when writing, only the adapters are written and the config points there (default: a copy in "
                "base_model/)",
    },
    extra_of=frozenset({"hf"}),  # the base's config fields and files, written with it in base_model/
)


@hookimpl
def ckpt_formats():
    return [FORK_SPEC, PEFT_SPEC]


@hookimpl
def detect(path: Path):
    return [d for d in (detection.detect_fork(path), detection.detect_peft(path)) if d is not None] or None


def _flag(options: dict, name: str) -> bool:
    value = options.get(name, False)
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"option {name} takes true or false, not {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)


def _number(options: dict, name: str, kind: type, default=None):
    """Option ``name`` as an int or a float (``kind``); UsageError for anything else."""
    value = options.get(name, default)
    if value is None:
        return None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"option {name} takes {'an integer' if kind is int else 'a number'}, not {value!r}") from None


def drop_optimizer(ck: Checkpoint, why: str) -> Checkpoint:
    """``ck`` without optimizer state (with a one-line warning), if it had any."""
    ts = ck.train_state
    if ts is None or ts.optimizer is None:
        return ck
    warnings.warn(f"optimizer state dropped: {why}; training resumes with a fresh optimizer", CkptWarning, stacklevel=3)
    return ck.evolve(train_state=attrs.evolve(ts, optimizer=None))


def _no_merge_option(options: dict) -> None:
    """The old spelling of a merge, refused naming the core's flag (one way to merge)."""
    if "merge" in options:
        raise UsageError("--option merge=true is gone: merge with --merge-adapters "
                         "(and --option tied_head=tie to keep a tied head tied)")


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any]):
    if format == forkfile.NAME:
        _no_merge_option(options)
        if _flag(options, "verify"):
            check_archive(path)
        return forkfile.read(path, _number(options, "alpha", float))
    if format == peftdir.NAME:
        return peftdir.read(path, options.get("base"))
    return None


def _targets(value) -> list[str]:
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    return list(value)


def _edit(ck: Checkpoint, options: dict) -> Checkpoint:
    """Apply ``rank``, ``targets`` and ``rank_change`` to ``ck``."""
    _no_merge_option(options)
    if "tied_head" in options and ck.adapters and options.get("rank_change") != "merge":
        raise UsageError("option tied_head applies when merging: add --merge-adapters (or --option rank_change=merge)")
    rank = _number(options, "rank", int)
    if rank is None:
        given = [k for k in ("targets", "rank_change", "init", "seed") if k in options]
        if given:
            raise UsageError(f"option {given[0]} needs --option rank=N")
        return ck
    if rank < 1:
        raise UsageError(f"rank must be at least 1, not {rank}")
    if "targets" in options:
        names = edit.targets_of(ck, _targets(options["targets"]))
    else:
        names = list(ck.adapters) or edit.targets_of(ck, ["attn"])
    if not names:
        raise UsageError(f"no tensor of this checkpoint is a target ({options.get('targets', 'attn')})")
    widest = max(max(ck.tensor(n).shape, default=1) for n in names)
    if rank > widest:
        raise UsageError(f"rank {rank} is larger than every target's dimensions (at most {widest}): adapters that wide "
                         "add nothing")
    resized = [n for n in names if n in ck.adapters and ck.adapters[n].rank != rank]
    change = options.get("rank_change")
    if resized and change not in ("pad", "merge"):
        old = sorted({ck.adapters[n].rank for n in resized})
        raise UsageError(f"the adapters have rank {'/'.join(map(str, old))}, not {rank}: pass --option rank_change=pad "
                         "(exact: zero-padding computes the same) or rank_change=merge (merges them into the weights in "
                         "float32, then fresh adapters)")
    if change == "pad" and resized:
        if "alpha" in options:
            raise UsageError("rank_change=pad keeps each adapter's scale exact by rescaling alpha; leave out alpha")
        ck = ck.evolve(adapters={n: edit.pad(a, rank) if n in resized else a for n, a in ck.adapters.items()})
    elif change == "merge" and resized:
        ck = edit.merge(ck, options.get("tied_head", "untie"), only=resized)
    new = [n for n in names if n not in ck.adapters]
    alpha = _number(options, "alpha", float, 1.0)
    ck = edit.add_fresh(ck, new, rank, alpha, options.get("init", "kaiming"), _number(options, "seed", int, 0))
    if new or resized:
        what = f"{len(new)} fresh adapter(s)" if new else f"rank {rank}"
        ck = drop_optimizer(ck, f"the parameter set changed ({what})")
    return ck


@hookimpl
def from_canonical(checkpoint: Checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format == forkfile.NAME:
        edited = _edit(checkpoint, options)
        forkfile.write(edited, path)
        return edited
    if format == peftdir.NAME:
        peftdir.write(checkpoint, path, options.get("base"))
        return True
    return None


@hookimpl
def train_state(path: Path, format: str):
    if format == forkfile.NAME:
        return forkfile.train_state(path)
    return None
