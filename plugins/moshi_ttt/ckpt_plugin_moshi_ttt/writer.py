"""Writing a canonical Checkpoint as a moshi run directory, checkpoint folder or
``consolidated/`` folder, laid out as the fine-tuning code does (keys sorted, no
safetensors metadata, one weights file).

- ``weights=full``: ``consolidated.safetensors``. Adapters, if any (not merged: merging is
  ``--merge-adapters``), are written as the LoRA-wrapped model's state dict
  (``X.frozen_W.weight``, ``X.lora_A.weight``, ``X.lora_B.weight``) with ``"lora": true``;
  without adapters config.json says ``"lora": false``, so moshi wraps no random adapters
  around merged weights. Adapters without their base weights (LoRA tensors alone, or
  adapters on absent bases) need ``base=PATH``.
- ``weights=lora``: ``lora.safetensors``: LoRA matrices and the trained tensors (TTT
  blocks, and whatever the source ``lora.safetensors`` held); dropping any other tensor
  is refused unless ``drop_frozen=true``. Absent bases are not written: the default when
  the checkpoint has any. What the file cannot say (an absent base's dtype other than its
  adapter's, an adapter's alpha and scaling other than a plain scale) is JSON under the
  metadata key ``ckpt_core_adapters``.
- ``init_state=true``: weights and config.json only, for a new run's ``init_state_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckpt_core import BaseMissing, Checkpoint, CorruptInput, LossyConversion, Tensor, UsageError, graph, safetensors_io
from ckpt_core.tensor import same_bytes

from . import keys, layout, reader, state, ttt

LAYOUTS = ("run", "checkpoint", "consolidated")


def _flag(options: dict[str, Any], name: str) -> bool:
    value = options.get(name, False)
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def _choice(options: dict[str, Any], name: str, choices: tuple[str, ...], default: str) -> str:
    value = options.get(name, default)
    if value not in choices:
        raise UsageError(f"option {name}={value!r}: use one of {', '.join(choices)}")
    return value


def unattached_lora(ck: Checkpoint) -> list[str]:
    return [n for n in ck.tensors if n.endswith((keys.LORA_A, keys.LORA_B))]


def write(ck: Checkpoint, path: Path, options: dict[str, Any]) -> None:
    """Write ``ck`` at ``path`` (which does not exist yet)."""
    init_state = _flag(options, "init_state")
    own = ck.layout.of(reader.NAME)
    default_layout = ("consolidated" if path.name == layout.CONSOLIDATED or init_state else
                      "checkpoint" if layout.STEP.match(path.name) else
                      "consolidated" if ck.train_state is None else  # no state: no step to invent
                      own.variant if own is not None else "run")
    where = _choice(options, "layout", LAYOUTS, default_layout)
    orphans = [n for n in ck.absent_names() if n not in ck.adapters]
    if orphans:
        raise LossyConversion(f"{orphans[0]} is absent (no bytes) and no adapter is on it: moshi's files have no place "
                              "for its name. Nothing was written.")
    without_base = len(unattached_lora(ck)) + len(ck.absent_names())
    weights = _choice(options, "weights", ("full", "lora"), "lora" if without_base else "full")
    naming = _choice(options, "naming", ("current", "legacy"), "current")
    if weights == "full" and without_base:
        if options.get("base") is None:
            raise BaseMissing(f"{without_base} LoRA tensors or adapters have no base weights: a full consolidated.safetensors "
                              "needs --option base=PATH (the model they were trained on), or write --option weights=lora")
        if not isinstance(options["base"], str):
            raise UsageError(f"option base takes a path, not {options['base']!r}")
        ck = _with_base(ck, Path(options["base"]))
    ts = None if init_state else ck.train_state
    if ts is not None:
        state.check_holdable(ts)
        _check_state(ts, where)
    tensors, config = _full(ck) if weights == "full" else _lora(ck, _flag(options, "drop_frozen"))
    added = [k for k in ("lora_rank", "lora_scaling") if k in config and k not in ck.arch.params]
    if naming == "legacy":
        if ck.adapters and weights == "full":
            raise UsageError("naming=legacy writes plain weights only: merge the adapters (--merge-adapters) or write weights=lora")
        tensors = keys.join_legacy(tensors)
    consolidated = _folders(path, where, ts)
    recorded = graph.layouts_to_json(ck, reader.NAME)  # the source's layouts, so converting back needs no options
    metadata = {**({graph.LAYOUTS_KEY: recorded} if recorded else {}), **_adapter_facts(ck, added)}
    safetensors_io.write_file(consolidated / (layout.FULL if weights == "full" else layout.LORA), dict(sorted(tensors.items())),
                              metadata or None)
    safetensors_io.write_bytes(consolidated / layout.CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    if ts is not None:
        _write_state(ts, consolidated, path)


def _with_base(ck: Checkpoint, base: Path) -> Checkpoint:
    """``ck`` with the weights its adapters and LoRA tensors lack taken from ``base``."""
    absent = set(ck.absent_names())
    flat = {n: ck.tensor(n) for n in ck.names() if n not in absent and ck.ties.get(n) not in absent}
    flat = reader.with_base(flat, base)
    tensors, ties, adapters = reader.assemble(flat, ck.arch.params.get("lora_scaling"), base)
    lacking = [n for n in ck.adapters if n not in tensors and n not in ties]
    if lacking:
        raise CorruptInput(f"base={base}: has no {lacking[0]}, which an adapter is on")
    return ck.evolve(tensors=tensors, ties=ties, adapters={**adapters, **ck.adapters})


def _adapter_facts(ck: Checkpoint, added: list[str]) -> dict[str, str]:
    """The metadata entry of what moshi's files cannot say: absent bases' dtypes where they
    are not their adapter's, alpha and scaling of adapters stated otherwise than as a plain
    scale, the config.json keys written for the adapters that were no hyper-parameters
    of the checkpoint (``added``: adapters from another format), and whether the TTT facts the
    reader derives belong in its hyper-parameters (``ttt_facts``)."""
    bases = {n: ck.tensors[n].dtype for n in ck.absent_names() if n in ck.adapters and ck.tensors[n].dtype != ck.adapters[n].a.dtype}
    stated = {n: {"alpha": ad.alpha, "scaling": ad.scaling} for n, ad in ck.adapters.items()
              if ad.scaling != "alpha" or type(ad.alpha) is not float}
    facts = {k: v for k, v in (("bases", bases), ("adapters", stated), ("added", added)) if v}
    if keys.ttt_layers(ck.names()) and not any(k in ck.arch.params for k in ttt.FACT_KEYS):
        facts["ttt_facts"] = False  # the reader derives them from TTT tensors; this checkpoint had none
    return {reader.ADAPTERS_KEY: json.dumps(facts, separators=(",", ":"))} if facts else {}


def _check_ties(ck: Checkpoint) -> None:
    foreign = [f"{a} -> {t}" for a, t in ck.ties.items()
               if not ((m := keys.ALIAS.match(a)) and m.group(1) + m.group(2) == t)]
    if foreign:
        raise LossyConversion(f"moshi checkpoints tie only a TTT layer's two names of one tensor; cannot keep the tie "
                              f"{foreign[0]}" + (f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else "")
                              + ". Convert to canonical instead. Nothing was written.")
    # Reading makes a TTT layer's second name a tie to its original without reading data, so
    # a second name stored apart with other bytes (not a merge of the same adapter into both)
    # would come back as the original.
    names = set(ck.names())
    apart = [n for n in ck.tensors if (m := keys.ALIAS.match(n)) and m.group(1) + m.group(2) in names
             and not same_bytes(ck.tensors[n], ck.tensor(m.group(1) + m.group(2)))]
    if apart:
        raise LossyConversion(f"moshi saves a TTT layer's {apart[0]} as the same tensor as its original; this checkpoint "
                              "stores it apart with other contents" + (f" (and {len(apart) - 1} more)" if len(apart) > 1 else "")
                              + ". Convert to canonical instead. Nothing was written.")


def _lora_config(ck: Checkpoint) -> dict[str, Any]:
    """``lora_rank`` and ``lora_scaling`` of the adapters (moshi has one of each per model)."""
    if not ck.adapters:
        return {}
    bad = [n for n, ad in ck.adapters.items() if ad.kind != "linear" or not n.endswith(".weight")]
    if bad:
        raise LossyConversion(f"moshi LoRA wraps linear layers only; the adapter on {bad[0]} has no place "
                              "(merge it with --merge-adapters). Nothing was written.")
    ranks = {ad.rank for ad in ck.adapters.values()}
    scales = {ad.scale for ad in ck.adapters.values()}
    if len(ranks) > 1 or len(scales) > 1:
        raise LossyConversion(f"moshi keeps one lora_rank and one lora_scaling per model; these adapters have ranks "
                              f"{sorted(ranks)} and scales {sorted(scales)} (merge them with --merge-adapters). Nothing was written.")
    scale, stated = scales.pop(), ck.arch.params.get("lora_scaling")
    return {"lora_rank": ranks.pop(), "lora_scaling": stated if stated == scale else scale}


def _config(ck: Checkpoint, lora: bool) -> dict[str, Any]:
    config = {k: v for k, v in ck.arch.params.items() if k not in ttt.FACT_KEYS}
    return {**config, "lora": lora, **_lora_config(ck)}


def _full(ck: Checkpoint) -> tuple[dict[str, Tensor], dict[str, Any]]:
    _check_ties(ck)
    layers = keys.ttt_layers(ck.names())
    out: dict[str, Tensor] = {}
    for name in ck.names():
        ad = ck.adapters.get(name)
        if ad is None:
            out[keys.to_moshi(name, layers)] = ck.tensor(name)
            continue
        prefix = name[:-len(".weight")]
        for suffix, t in ((keys.FROZEN, ck.tensor(name)), (keys.LORA_A, ad.a), (keys.LORA_B, ad.b)):
            out[keys.to_moshi(prefix + suffix, layers)] = t
    return out, _config(ck, lora=bool(ck.adapters))


def _lora(ck: Checkpoint, drop_frozen: bool) -> tuple[dict[str, Tensor], dict[str, Any]]:
    _check_ties(ck)
    layers = keys.ttt_layers(ck.names())
    own = ck.layout.of(reader.NAME)
    trained = own.facts.get("trained") if own is not None else None
    if trained is None:
        trained = [n for n in ck.names() if keys.TTT_LAYER.match(n) and not keys.ALIAS.match(n)]
    absent = set(ck.absent_names())
    keep = (set(trained) | set(unattached_lora(ck)) | {a for a, t in ck.ties.items() if t.endswith((keys.LORA_A, keys.LORA_B))}) - absent
    dropped = [n for n in ck.names() if n not in keep and n not in absent and ck.ties.get(n) not in absent]
    if dropped and not drop_frozen:
        raise LossyConversion(f"lora.safetensors keeps adapters and trained tensors only; {len(dropped)} frozen tensors "
                              f"({', '.join(dropped[:3])}{', ...' if len(dropped) > 3 else ''}) would be dropped "
                              "(allow with --option drop_frozen=true). Nothing was written.")
    out = {keys.to_moshi(n, layers): ck.tensor(n) for n in ck.names() if n in keep}
    for name, ad in ck.adapters.items():
        prefix = name[:-len(".weight")]
        out[keys.to_moshi(prefix + keys.LORA_A, layers)] = ad.a
        out[keys.to_moshi(prefix + keys.LORA_B, layers)] = ad.b
    return out, _config(ck, lora=True)


def _folders(path: Path, where: str, ts) -> Path:
    """Create the layout's folders under ``path``; return the ``consolidated/`` one."""
    step = ts.step if ts is not None and ts.step is not None else 0
    if where == "consolidated":
        path.mkdir()
        return path
    if where == "checkpoint":
        named = layout.step_of(path)
        if named is not None and named != step:
            raise UsageError(f"{path.name} names step {named} but the checkpoint is at step {step}")
        folder = path
    else:
        folder = path / layout.CHECKPOINTS / layout.checkpoint_name(step)
    (folder / layout.CONSOLIDATED).mkdir(parents=True)
    return folder / layout.CONSOLIDATED


def _check_state(ts, where: str) -> None:
    """LossyConversion for state the chosen layout has no place for."""
    if "args" in ts.config and where != "run":
        raise LossyConversion("the run config from args.yaml belongs in a run directory: write --option layout=run "
                              "(or --option init_state=true for weights only). Nothing was written.")
    if where == "consolidated" and ts.step is not None and ts.optimizer is None:
        raise LossyConversion(f"a consolidated/ folder without optimizer state cannot record step {ts.step}: "
                              "write --option layout=checkpoint or layout=run. Nothing was written.")


def _write_state(ts, consolidated: Path, path: Path) -> None:
    import yaml

    if "args" in ts.config:
        text = yaml.safe_dump(ts.config["args"], sort_keys=False, allow_unicode=True)
        safetensors_io.write_bytes(path / layout.ARGS, text.encode())
    if "training_config" in ts.config:
        text = json.dumps(ts.config["training_config"], indent=2) + "\n"
        safetensors_io.write_bytes(consolidated / layout.TRAINING_CONFIG, text.encode())
    if ts.optimizer is not None:
        state.write_optimizer(consolidated / layout.OPTIMIZER, ts.optimizer, ts.extra.get("optimizer_state_step", ts.step or 0))

