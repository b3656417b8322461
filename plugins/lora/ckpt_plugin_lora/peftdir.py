"""Hugging Face peft LoRA adapter directories, read onto their base model.

    adapter/
      adapter_config.json          peft_type LORA, r, lora_alpha, target_modules, rank_pattern, ...
      adapter_model.safetensors    base_model.model.<module>.lora_A.weight ... (or .bin)
      base_model/                  the base model (written by ckpt-core only)

The base is HF GPT-2 (Conv1D targets, ``fan_in_fan_out``) or a Llama / Mistral / Qwen2 /
Qwen3 directory (targets ``q_proj`` ... ``down_proj``, ``embed_tokens``, ``lm_head``), or
anything else ckpt-core reads whose names the adapters' module paths name. A peft
directory holds adapters only, so a canonical checkpoint needs the base weights too.
Reading takes them from ``--option base=PATH``, else ``base_model/`` inside the
directory, else ``base_model_name_or_path`` when it is a local path. Writing puts the base
in ``base_model/`` in the ``hf`` format (ckpt-plugin-hf), unless ``base=PATH`` names where it
already is (then only the adapters are written and the config points there).

peft saves the whole weight of a targeted embedding or head beside its adapters
(``<module>.base_layer.weight``) and loads it over the base's: so it is read, replacing
the base's tensor, and written again where it was. Adapter fields peft's config cannot
say go to the safetensors metadata key ``ckpt_core``.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

import attrs

from ckpt_core import Adapter, Arch, Checkpoint, CorruptInput, Layout, LossyConversion, NotFound, Tensor, UsageError
from ckpt_core import graph, jsonfile, safetensors_io, torchfile

from . import keys

NAME = "peft"
CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
BASE_DIR = "base_model"
META_KEY = "ckpt_core"
GRAPH_KEY = "ckpt_core_graph"  # adapters alone: the core's graph (arch, earlier layouts)
ABSENT = "absent"  # the layout variant of adapters read without their base
# a Mistral directory is read as the llama family; adapters read alone are ``generic``
FAMILIES = ("gpt", "llama", "qwen2", "qwen3", "generic")
SCALINGS = {False: "alpha/rank", True: "alpha/sqrt(rank)"}


def _config(path: Path) -> dict:
    config = jsonfile.read_object(path / CONFIG)
    if config.get("peft_type") != "LORA":
        raise CorruptInput(f"{path / CONFIG}: not a peft LoRA config (peft_type {config.get('peft_type')!r})")
    if config.get("use_dora"):
        raise CorruptInput(f"{path / CONFIG}: DoRA adapters (use_dora) have a magnitude vector ckpt-core does not model")
    return config


def _pattern_value(patterns: dict, module: str, default):
    """peft's ``rank_pattern`` / ``alpha_pattern`` lookup: a key matches a module path's end."""
    for pattern, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?{pattern}\Z", module):
            return value
    return default


def _weights(path: Path) -> tuple[str, dict, dict]:
    """The adapter weight file's name, its tensors and its metadata."""
    for name in WEIGHTS:
        if (path / name).is_file():
            if name.endswith(".safetensors"):
                tensors, metadata = safetensors_io.open_file(path / name)
                return name, tensors, dict(metadata or {})
            obj = torchfile.load(path / name)
            if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
                raise CorruptInput(f"{path / name}: not a state dict")
            return name, dict(obj), {}
    raise NotFound(f"{path}: no {' or '.join(WEIGHTS)}")


def _base_path(path: Path, config: dict, option: Any) -> tuple[Path, str] | None:
    """Where the base model is, and how it was found; None when nothing names one here."""
    if option:
        if not isinstance(option, str):
            raise UsageError(f"option base takes a path, not {option!r}")
        return Path(option), "option"
    if (path / BASE_DIR).is_dir():
        return path / BASE_DIR, "directory"
    named = config.get("base_model_name_or_path")
    if isinstance(named, str) and named:
        for candidate in (Path(named), path / named):
            if candidate.exists():
                return candidate, "config"
    return None


def _parts(where: Path, tensors: dict[str, Tensor]) -> tuple[dict, dict, dict]:
    """The file's tensors as adapter matrices (canonical name -> {"a", "b"}), the adapters'
    kinds, and the whole weights peft saved beside them (canonical name -> tensor)."""
    parts: dict[str, dict[str, Tensor]] = {}
    kinds: dict[str, str] = {}
    saved: dict[str, Tensor] = {}
    for key, t in tensors.items():
        short = key.removeprefix(keys.PEFT_PREFIX)
        found = keys.match(keys.PEFT, short) if short != key else None
        if found is None:
            raise CorruptInput(f"{where}: {key!r} is not a peft LoRA key ckpt-core reads")
        name, part = found
        if part == "base":
            saved[name] = t
            continue
        parts.setdefault(name, {})[part[0]] = keys.orient(t, part)
        kinds[name] = "embedding" if "lora_embedding_" in short else "linear"
    for name, p in parts.items():
        if set(p) != {"a", "b"}:
            raise CorruptInput(f"{where}: the adapter on {name!r} lacks its {'B' if 'a' in p else 'A'} matrix")
    return parts, kinds, saved


def read(path: Path, base: Any = None) -> Checkpoint:
    """The adapters at ``path`` on their base model, or on absent bases (adapters alone)
    when no base is given or found."""
    config = _config(path)
    weights_name, tensors, metadata = _weights(path)
    stored = json.loads(metadata.pop(META_KEY, "{}") or "{}")
    recorded = metadata.pop(GRAPH_KEY, None)
    parts, kinds, saved = _parts(path / weights_name, tensors)
    scaling = SCALINGS[bool(config.get("use_rslora"))]
    adapters = {}
    for name, p in parts.items():
        e = stored.get("adapters", {}).get(name, {})
        module = keys.module_of(name)
        alpha = e["alpha"] if "alpha" in e else float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8)))
        adapters[name] = Adapter(p["a"], p["b"], alpha, e.get("scaling", scaling), e.get("kind", kinds[name]))
    facts = {"config": config, "weights": weights_name, "metadata": metadata,
             **({"base_layers": sorted(saved)} if saved else {})}
    found = _base_path(path, config, base)
    if found is None:
        g = graph.from_json(recorded, f"{path / weights_name}: metadata {GRAPH_KEY!r}") if recorded is not None else None
        bases = {name: Tensor.absent(stored.get("bases", {}).get(name, ad.a.dtype), (ad.b.shape[0], ad.a.shape[1]))
                 for name, ad in adapters.items()}
        order = dict.fromkeys([*stored.get("tensors", []), *sorted(set(bases) | set(saved))])
        own = {name: saved.get(name, bases.get(name)) for name in order if name in bases or name in saved}
        return Checkpoint(arch=g.arch if g else Arch(), tensors=own, adapters=adapters,
                          layout=Layout(NAME, ABSENT, facts, g.layouts if g else ()))
    base_path, source = found
    base_ck = read_base(base_path)
    if base_ck.adapters:
        raise UsageError(f"{base_path}: the base model already has adapters; merge them first (--merge-adapters)")
    own = dict(base_ck.tensors)
    for name, t in saved.items():
        if name not in own and name not in base_ck.ties:
            raise CorruptInput(f"{path / weights_name}: a saved {name!r}, which the base model {base_path} does not have")
        if name in own:  # a tied head's saved copy is the table it shares: the tie stays
            own[name] = t
    for name in adapters:
        if name not in own and name not in base_ck.ties:
            raise CorruptInput(f"{path}: adapter on {name!r}, which the base model {base_path} does not have")
    earlier = (attrs.evolve(base_ck.layout, earlier=()), *base_ck.layout.earlier)
    return base_ck.evolve(tensors=own, adapters=adapters, layout=Layout(NAME, source, {**facts, "base_source": source}, earlier))


def read_base(path: Path) -> Checkpoint:
    """The base model at ``path``, through the core: an ``hf`` directory (GPT-2 or a
    decoder), a canonical one, a safetensors file ..."""
    from ckpt_core import api

    return api.load(path)


def write_base(ck: Checkpoint, path: Path) -> None:
    """``ck`` (no adapters) as the base model directory ``path``, in the ``hf`` format (with
    the base's own config fields and files, kept in ``extra["hf"]``)."""
    from ckpt_core import api

    try:
        api.save(ck, path, "hf")
    except LossyConversion as e:
        raise LossyConversion(f"the base model cannot go to {BASE_DIR}/ as an hf directory ({e}); or pass "
                              "--option base=PATH naming where the base model is", e.losses) from e


# -- writing ---------------------------------------------------------------------------


def _template(conv1d: bool) -> dict:
    return {"base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": conv1d, "inference_mode": True,
            "init_lora_weights": True, "lora_alpha": 8, "lora_dropout": 0.0, "modules_to_save": None,
            "peft_type": "LORA", "r": 8, "rank_pattern": {}, "alpha_pattern": {}, "target_modules": [],
            "task_type": None, "use_dora": False, "use_rslora": False}


def _targets_cover(targets, modules: list[str]) -> bool:
    if isinstance(targets, str):
        return all(re.fullmatch(targets, m) for m in modules)
    if isinstance(targets, list):
        return all(any(m == t or m.endswith("." + t) for t in targets) for m in modules)
    return False


def _targets(modules: list[str]) -> list[str]:
    """peft's ``target_modules`` for adapters on ``modules``: their last names (``q_proj``)
    when each is on every layer from 0 up to the last one adapted, else the module paths."""
    layers: dict[str, set[int]] = {}
    for m in modules:
        found = re.search(r"\.(\d+)\.", m)
        layers.setdefault(m.rpartition(".")[2], set()).add(int(found.group(1)) if found else -1)
    top = max((i for found in layers.values() for i in found), default=-1)
    every = set(range(top + 1)) or {-1}
    if all(found == every or found == {-1} for found in layers.values()):
        return sorted(layers)
    return sorted(modules)


def _config_for(ck: Checkpoint, base_option: Any) -> tuple[dict, dict]:
    """The adapter_config.json for ``ck``'s adapters, and the metadata entries it needs.
    An adapter whose scale is stated otherwise (mlx-lm's or moshi's plain scale) gets the
    ``lora_alpha`` that gives peft the same scale; the metadata keeps what it was."""
    own = ck.layout.of(NAME)
    facts = own.facts if own else {}
    config = dict(facts.get("config") or _template(ck.arch.family == "gpt"))
    extra: dict[str, dict] = {}
    rsl = [ad.scaling == "alpha/sqrt(rank)" for ad in ck.adapters.values()]
    use_rslora = bool(rsl) and Counter(rsl).most_common(1)[0][0]

    def alpha_of(ad):  # what lora_alpha makes peft compute ad's scale
        if ad.scaling == SCALINGS[use_rslora]:
            return ad.alpha
        return ad.scale * (math.sqrt(ad.rank) if use_rslora else ad.rank)

    modules = {keys.module_of(n): (ad.rank, alpha_of(ad)) for n, ad in ck.adapters.items()}

    def same(cfg, module, rank, alpha):
        r = _pattern_value(cfg.get("rank_pattern"), module, cfg.get("r"))
        stated = _pattern_value(cfg.get("alpha_pattern"), module, cfg.get("lora_alpha"))
        return r == rank and isinstance(stated, (int, float)) and float(stated) == alpha

    fits = all(same(config, m, *ra) for m, ra in modules.items())
    if not fits or bool(config.get("use_rslora")) != use_rslora:
        ranks = Counter(rank for rank, _ in modules.values())
        alphas = Counter(alpha for _, alpha in modules.values())
        r = ranks.most_common(1)[0][0] if ranks else config.get("r", 8)
        alpha = alphas.most_common(1)[0][0] if alphas else config.get("lora_alpha", 8)
        config.update(r=r, lora_alpha=alpha, use_rslora=use_rslora,
                      rank_pattern={m: rank for m, (rank, _) in modules.items() if rank != r},
                      alpha_pattern={m: a for m, (_, a) in modules.items() if a != alpha})
    if not _targets_cover(config.get("target_modules"), list(modules)):
        config["target_modules"] = _targets(list(modules))
    for name, ad in ck.adapters.items():  # the kind is in the key names (lora_embedding_*)
        if ad.scaling != SCALINGS[use_rslora] or type(ad.alpha) is not float or not same(config, keys.module_of(name), ad.rank, ad.alpha):
            extra[name] = {"alpha": ad.alpha, "scaling": ad.scaling}
    if base_option:
        config["base_model_name_or_path"] = str(base_option)
    return config, extra


def write(ck: Checkpoint, path: Path, base: Any = None) -> None:
    """The adapters of ``ck`` at ``path``, and its base in ``base_model/`` unless ``base``
    names it or the checkpoint holds adapters alone (then their bases' dtypes, the order
    and the graph go to the metadata, and the whole weights it has are saved as peft saves
    an adapted embedding's)."""
    if base and not Path(base).exists():
        raise UsageError(f"--option base={base}: no such base model; omit it to write the base into {BASE_DIR}/")
    own = ck.layout.of(NAME)
    facts = own.facts if own else {}
    bad = [n for n in ck.adapters if keys.module_of(n) is None]
    if bad:
        raise LossyConversion(f"peft holds adapters on '<module>.weight' tensors only; the adapter on {bad[0]!r} would be lost "
                              "(merge it with --merge-adapters). Nothing was written.")
    absent = ck.absent_names()
    if absent:
        whole = [n for n in ck.tensors if n not in absent]
        homeless = [n for n in [*ck.tensors, *ck.ties] if n not in ck.adapters or n in ck.ties]
        if homeless:
            raise LossyConversion(f"a peft directory of adapters alone holds the adapters and the weights of adapted "
                                  f"modules only; {homeless[0]} would be lost. Nothing was written.")
    else:
        whole = [n for n in facts.get("base_layers", []) if n in ck.names()]
    config, extra = _config_for(ck, base)
    tensors = {keys.PEFT_PREFIX + keys.upstream(keys.PEFT, name, "base"): ck.tensor(name) for name in whole}
    for name, ad in ck.adapters.items():
        wanted = ("bT", "aT") if ad.kind == "embedding" else ("a", "b")
        for part in wanted:
            key = keys.PEFT_PREFIX + keys.upstream(keys.PEFT, name, part)
            t = ad.a if part[0] == "a" else ad.b
            tensors[key] = t.T if part.endswith("T") else t
    path.mkdir()
    metadata = {"format": "pt", **facts.get("metadata", {})}
    stored = {"adapters": extra} if extra else {}
    if absent:
        stored.update(tensors=list(ck.tensors), bases={n: ck.tensors[n].dtype for n in absent})
        metadata[GRAPH_KEY] = graph.to_json(ck, "a peft adapter file", NAME)
    if stored:
        metadata[META_KEY] = json.dumps(stored, separators=(",", ":"))
    if facts.get("weights") == "adapter_model.bin" and not stored:
        torchfile.save(tensors, path / "adapter_model.bin")
    else:
        safetensors_io.write_file(path / "adapter_model.safetensors", tensors, metadata)
    if not base and not absent:
        write_base(ck.evolve(adapters={}), path / BASE_DIR)
    safetensors_io.write_bytes(path / CONFIG, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
