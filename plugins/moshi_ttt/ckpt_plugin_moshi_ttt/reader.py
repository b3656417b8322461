"""Reading a moshi checkpoint (run directory, checkpoint folder or ``consolidated/``) as a
canonical Checkpoint, lazily: tensors are file ranges, nothing is read but headers, JSON,
YAML and the optimizer pickle's (mmap-ed) structure.

LoRA pairs become adapters on their base tensors (moshi's scale: ``lora_scaling``, not
divided by the rank): in a full file, from ``base=PATH`` for a ``lora.safetensors``, and
without a base on absent ones (``Tensor.absent``: adapters alone, their base's name
``X.weight``, shape [out, in] and the dtype the metadata records or the adapter's). A TTT
layer's second name for its original layer's tensors becomes a tie.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckpt_core import Adapter, Arch, Checkpoint, CorruptInput, Layout, NotFound, Tensor, UsageError
from ckpt_core import graph, jsonfile, safetensors_io

from . import keys, layout, state, ttt
from .family import MOSHI

NAME = "moshi"
# safetensors metadata key: what moshi's files cannot say of adapters alone (their bases'
# dtypes) and of adapters stated otherwise (alpha and scaling as their source gave them)
ADAPTERS_KEY = "ckpt_core_adapters"


def locate(path: Path, step: int | None = None) -> tuple[str, Path, Path | None]:
    """(kind, consolidated folder, run dir or None) for any path the format reads."""
    found = layout.kind(path)
    if found is None:
        raise NotFound(f"{path}: not a moshi run directory, checkpoint folder or consolidated/ folder")
    if step is not None and found != "run":
        raise UsageError(f"{path}: step={step} picks a checkpoint of a run directory; this is a {found} folder")
    if found == "run":
        return found, layout.pick(path, step) / layout.CONSOLIDATED, path
    if found == "checkpoint":
        entry = layout.entry(path)
        if not entry.complete:
            raise CorruptInput(f"{path}: incomplete checkpoint ({entry.note})")
        return found, path / layout.CONSOLIDATED, None
    return found, path, None


def read_weights(consolidated: Path) -> tuple[str, dict[str, Tensor], dict[str, Any], tuple[Layout, ...], dict]:
    """(weights file name, its tensors, config.json, the earlier layouts its metadata records,
    the adapter facts it records: ``ADAPTERS_KEY``)."""
    weights = layout.weights_file(consolidated)
    if not (consolidated / layout.CONFIG).is_file():
        raise CorruptInput(f"{consolidated}: no {layout.CONFIG} beside {weights.name}")
    config = jsonfile.read_object(consolidated / layout.CONFIG)
    raw, metadata = safetensors_io.open_file(weights)
    recorded = (metadata or {}).get(graph.LAYOUTS_KEY)
    earlier = graph.layouts_from_json(recorded, f"{weights}: metadata {graph.LAYOUTS_KEY!r}") if recorded is not None else ()
    try:
        facts = json.loads((metadata or {}).get(ADAPTERS_KEY, "{}"))
    except ValueError:
        facts = None
    if not isinstance(facts, dict) or not all(isinstance(facts.get(k, {}), dict) for k in ("bases", "adapters")) \
            or not isinstance(facts.get("added", []), list) or not isinstance(facts.get("ttt_facts", True), bool):
        raise CorruptInput(f"{weights}: metadata {ADAPTERS_KEY!r} is not a JSON object of bases, adapters, added keys "
                           "and ttt_facts")
    return weights.name, raw, config, earlier, facts


def current_naming(raw: dict[str, Tensor], config: dict[str, Any]) -> tuple[dict[str, Tensor], bool]:
    """Tensors under current moshi keys (legacy attention split per step) and whether any was legacy."""
    steps = depformer_steps(config)
    out: dict[str, Tensor] = {}
    for key in sorted(raw):
        out.update(keys.split_legacy(key, raw[key], steps if key.startswith("depformer.") else 1))
    return out, len(out) != len(raw) or any(k not in out for k in raw)


def depformer_steps(config: dict[str, Any]) -> int:
    """How many per-step weights a depformer attention layer has (moshi's ``mult``)."""
    schedule = config.get("depformer_weights_per_step_schedule")
    if schedule:
        return max(schedule) + 1
    return config.get("dep_q", 1) if config.get("depformer_weights_per_step") else 1


def assemble(flat: dict[str, Tensor], scaling: float | None, where: Path,
             absent: dict[str, str] | None = None) -> tuple[dict[str, Tensor], dict[str, str], dict[str, Adapter]]:
    """Canonical-named tensors as (stored, ties, adapters): LoRA pairs on a present base
    become adapters, and with ``absent`` (base name -> dtype recorded, for adapters alone)
    those without a base too, on absent bases; the TTT layers' second names become ties."""
    names = dict(flat)
    adapters: dict[str, Adapter] = {}
    for a_name in [n for n in names if n.endswith(keys.LORA_A)]:
        prefix = a_name[:-len(keys.LORA_A)]
        b_name, base = prefix + keys.LORA_B, prefix + ".weight"
        if b_name not in names:
            raise CorruptInput(f"{where}: {a_name} has no {b_name}")
        if base not in names and absent is not None:
            a, b = names[a_name], names[b_name]
            if len(a.shape) != 2 or len(b.shape) != 2:
                raise CorruptInput(f"{where}: {a_name} {list(a.shape)} and {b_name} {list(b.shape)} are not LoRA matrices")
            names[base] = Tensor.absent(absent.get(base, a.dtype), (b.shape[0], a.shape[1]))
        if base in names:
            if scaling is None:
                raise CorruptInput(f"{where}: LoRA weights but config.json has no lora_scaling")
            adapters[base] = Adapter(names.pop(a_name), names.pop(b_name), float(scaling), "alpha")
    stray = [n for n in names if n.endswith(keys.LORA_B) and n[:-len(keys.LORA_B)] + keys.LORA_A not in names]
    if stray:
        raise CorruptInput(f"{where}: {stray[0]} has no lora_A partner")
    ties = {}
    for alias in [n for n in names if keys.ALIAS.match(n)]:
        m = keys.ALIAS.match(alias)
        target = m.group(1) + m.group(2)
        if target in names:
            a, t = names[alias], names[target]
            if (a.dtype, a.shape) != (t.dtype, t.shape):
                raise CorruptInput(f"{where}: {alias} is {a.dtype} {list(a.shape)} but its original {target} is {t.dtype} {list(t.shape)}")
            del names[alias]
            ties[alias] = target
    return dict(sorted(names.items())), dict(sorted(ties.items())), dict(sorted(adapters.items()))


def read(path: Path, options: dict[str, Any]) -> Checkpoint:
    """The canonical Checkpoint at ``path`` (options: ``step``, ``base``)."""
    found, consolidated, run_dir = locate(path, options.get("step"))
    weights_name, raw, config, earlier, recorded = read_weights(consolidated)
    current, legacy = current_naming(raw, config)
    flat = {keys.to_canonical(k): t for k, t in current.items()}
    if len(flat) != len(current):
        raise CorruptInput(f"{consolidated / weights_name}: two keys map to one canonical name")
    adapters_only = weights_name == layout.LORA
    trained = sorted(n for n in flat if not n.endswith((keys.LORA_A, keys.LORA_B))) if adapters_only else None
    if options.get("base") is not None:
        if not isinstance(options["base"], str):
            raise UsageError(f"option base takes a path, not {options['base']!r}")
        flat = with_base(flat, Path(options["base"]))
    alone = recorded.get("bases", {}) if adapters_only and options.get("base") is None else None
    tensors, ties, adapters = assemble(flat, config.get("lora_scaling"), consolidated / weights_name, alone)
    adapters = {name: _as_recorded(ad, recorded.get("adapters", {}).get(name)) for name, ad in adapters.items()}
    folder_step = layout.step_of(consolidated.parent) if found != "consolidated" else None
    ts = state.read(consolidated, folder_step, run_dir)
    params = {k: v for k, v in config.items() if k != "lora" and k not in recorded.get("added", [])}
    shapes = {n: t.shape for n, t in tensors.items()} | {a: tensors[t].shape for a, t in ties.items()}
    run_ttt = _ttt_settings(ts)
    facts, problems = ttt.verify(shapes, config, run_ttt)
    if recorded.get("ttt_facts") is False:  # written from a checkpoint without them: A -> moshi -> A is exact
        facts = {}
    if config.get("lora") and not adapters_only and not adapters and not any(n.endswith(keys.LORA_A) for n in tensors):
        problems.append('config.json says "lora": true but the weights are merged: moshi would wrap random adapters '
                        'around them (converting with this plugin writes "lora": false)')
    ttt.warn(problems, str(path))
    partial = any(t.is_absent for t in tensors.values())  # adapters alone: what is there must fit, nothing more
    family = MOSHI.name if not MOSHI.problems(shapes, params, complete=not partial) else "generic"
    return Checkpoint(
        arch=Arch(family, {**params, **facts}),
        tensors=tensors,
        ties=ties,
        adapters=adapters,
        train_state=ts,
        layout=Layout(NAME, found, {"weights": weights_name, "legacy_naming": legacy,
                                    "trained": trained}, earlier),
    )


def _as_recorded(ad: Adapter, stated: Any) -> Adapter:
    """``ad`` with the alpha and scaling its source stated, when the metadata records them
    (moshi's own ``lora_scaling`` is that scale as a plain multiplier)."""
    if not isinstance(stated, dict):
        return ad
    return Adapter(ad.a, ad.b, stated.get("alpha", ad.alpha), stated.get("scaling", ad.scaling), ad.kind)


def _ttt_settings(ts) -> dict[str, Any] | None:
    """The run config's ``ttt`` section (training_config.json first, then args.yaml)."""
    if ts is None:
        return None
    for source in ("training_config", "args"):
        section = ts.config.get(source)
        if isinstance(section, dict) and isinstance(section.get("ttt"), dict):
            return section["ttt"]
    return None


def with_base(flat: dict[str, Tensor], base: Path) -> dict[str, Tensor]:
    """Adapters-only tensors completed with the base weights at ``base`` (a moshi
    checkpoint, or a safetensors file such as the HF ``model.safetensors``). The TTT
    layers' second names are added for the base tensors of the layers that carry TTT."""
    if not base.exists():
        raise NotFound(f"base={base}: no such file or directory")
    if base.is_file():
        raw, _ = safetensors_io.open_file(base)
        current, _ = current_naming(raw, {})
    else:
        _, consolidated, _ = locate(base)
        _, raw, config, _, _ = read_weights(consolidated)
        current, _ = current_naming(raw, config)
    base_flat = {keys.to_canonical(k): t for k, t in current.items()}
    lora_like = [n for n in base_flat if n.endswith((keys.LORA_A, keys.LORA_B))]
    if lora_like:
        raise UsageError(f"base={base}: holds LoRA weights ({lora_like[0]}); give the full model the adapters were trained on")
    merged = {**base_flat, **flat}
    layers = keys.ttt_layers(flat)
    for name, t in base_flat.items():
        for i in layers:
            prefix = f"transformer.layers.{i}."
            if name.startswith(prefix) and not keys.TTT_LAYER.match(name):
                merged.setdefault(f"{prefix}ttt.original_layer.{name[len(prefix):]}", t)
    return merged
