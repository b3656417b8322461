"""mlx-lm LoRA adapter directories (what ``mlx_lm.lora`` writes), read and written as
adapters alone: the weights they attach to are not in the directory.

    adapters/
      adapter_config.json     fine_tune_type "lora", num_layers, lora_parameters {rank, scale,
                              dropout, keys}, and the training run's arguments
      adapters.safetensors    <module>.lora_a [in, r] and <module>.lora_b [r, out]

Each pair is an adapter on ``<module>.weight``, an absent tensor [out, in]: canonical
``a`` is ``lora_a.T`` and ``b`` is ``lora_b.T``. An embedding's adapter (mlx-lm's
LoRAEmbedding: ``lora_a`` [V, r], ``lora_b`` [r, C], delta ``lora_a @ lora_b``) is ``b =
lora_a``, ``a = lora_b``. ``scale`` is a plain multiplier (scaling ``alpha``), one for all
adapters, as is the rank. mlx-lm puts LoRA layers on ``keys`` (module paths inside a
block) in the last ``num_layers`` blocks (-1: all) and on ``keys`` naming modules outside
the blocks (``lm_head``); a layer given no weights adds nothing (its ``lora_b`` is zero).

What the files cannot say (each base's dtype, each adapter's alpha and scaling as its
source stated them, its kind, the arch and earlier layouts) is JSON under the safetensors
metadata keys ``ckpt_core`` (the core's graph) and ``ckpt_core_adapters``; mlx ignores them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ckpt_core import Adapter, Checkpoint, CorruptInput, Layout, LossyConversion, Tensor, graph, jsonfile
from ckpt_core import safetensors_io

from .directory import FORMAT_METADATA, META_KEY, NAME

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"
ADAPTERS_KEY = "ckpt_core_adapters"
VARIANT = "adapters"
EMBEDDINGS = ("embed_tokens", "wte")  # the Embedding modules of mlx-lm's Llama / Mistral / Qwen / GPT-2 models
BLOCK = re.compile(r"(?P<blocks>(?:.+?\.)?layers)\.(?P<i>\d+)\.(?P<key>.+)\Z")  # a module inside block i


def is_adapters(path: Path) -> bool:
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


def lora_parameters(path: Path) -> dict:
    """``adapter_config.json``'s LoRA settings; CorruptInput for what is not LoRA."""
    config = jsonfile.read_object(path / CONFIG)
    kind = config.get("fine_tune_type", "lora")
    if kind != "lora":
        raise CorruptInput(f"{path / CONFIG}: fine_tune_type {kind!r}; ckpt-core reads LoRA adapters only "
                           "(DoRA's magnitudes and full fine-tunes are not adapters it models)")
    lora = config.get("lora_parameters")
    if not isinstance(lora, dict) or not isinstance(lora.get("scale"), (int, float)) or isinstance(lora["scale"], bool):
        raise CorruptInput(f"{path / CONFIG}: lora_parameters has no numeric scale")
    return config


def read(path: Path) -> Checkpoint:
    config = lora_parameters(path)
    tensors, metadata = safetensors_io.open_file(path / WEIGHTS)
    metadata = dict(metadata or {})
    stored = metadata.pop(META_KEY, None)
    facts = _json(metadata.pop(ADAPTERS_KEY, "{}"), path / WEIGHTS)
    metadata.pop("format", None)
    parts: dict[str, dict[str, Tensor]] = {}
    for key, t in tensors.items():
        module, _, leaf = key.rpartition(".")
        if leaf not in ("lora_a", "lora_b") or not module or len(t.shape) != 2:
            raise CorruptInput(f"{path / WEIGHTS}: {key!r} {list(t.shape)} is not an mlx-lm LoRA matrix")
        parts.setdefault(module, {})[leaf] = t
    bases, adapters = {}, {}
    for module, p in parts.items():
        if set(p) != {"lora_a", "lora_b"}:
            raise CorruptInput(f"{path / WEIGHTS}: the adapter on {module!r} lacks its {'lora_b' if 'lora_a' in p else 'lora_a'}")
        name = module + ".weight"
        own = facts.get(name, {})
        kind = own.get("kind", "embedding" if module.rpartition(".")[2] in EMBEDDINGS else "linear")
        a, b = (p["lora_b"], p["lora_a"]) if kind == "embedding" else (p["lora_a"].T, p["lora_b"].T)
        adapters[name] = Adapter(a, b, own.get("alpha", float(config["lora_parameters"]["scale"])),
                                 own.get("scaling", "alpha"), kind)
        bases[name] = Tensor.absent(own.get("dtype", a.dtype), (b.shape[0], a.shape[1]))
    bases = {name: bases[name] for name in dict.fromkeys([*facts, *bases]) if name in bases}
    g = graph.from_json(stored, f"{path / WEIGHTS}: metadata {META_KEY!r}") if stored is not None else None
    layout = Layout(NAME, VARIANT, {"config": config, "adapters": sorted(adapters), "metadata": metadata},
                    g.layouts if g else ())
    if g is None:
        return Checkpoint(tensors=bases, adapters=adapters, layout=layout)
    return Checkpoint(arch=g.arch, tensors=bases, ties=g.ties, kv_sharing=g.kv_sharing, adapters=adapters,
                      trainable=g.trainable, layout=layout)


def _json(text: str, where: Path) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise CorruptInput(f"{where}: metadata {ADAPTERS_KEY!r} is not a JSON object")
    return value


# -- writing ---------------------------------------------------------------------------


def write(ck: Checkpoint, path: Path) -> None:
    """``ck``'s adapters as an adapters directory at ``path``; LossyConversion (before
    writing) for what one cannot hold: weights, ranks or scales that differ."""
    present = [n for n, t in ck.tensors.items() if not t.is_absent]
    if present:
        raise LossyConversion(f"an mlx-lm directory holds a model or adapters alone, and this checkpoint has adapters and "
                              f"weights ({present[0]}, ...): merge them with --merge-adapters for a model directory, or "
                              "convert the adapters from a file without the weights. Nothing was written.")
    bad = [n for n in ck.adapters if not n.endswith(".weight")] + [n for n in ck.tensors if n not in ck.adapters]
    ranks = sorted({ad.rank for ad in ck.adapters.values()})
    scales = sorted({ad.scale for ad in ck.adapters.values()})
    if bad or len(ranks) > 1 or len(scales) > 1:
        what = (f"{bad[0]!r} is no module's weight with an adapter" if bad else
                f"these have ranks {'/'.join(map(str, ranks))}" if len(ranks) > 1 else f"these have scales {scales}")
        raise LossyConversion(f"mlx-lm adapters sit on modules' weights with one rank and one scale "
                              f"(lora_parameters); {what}. Nothing was written.")
    modules = [n.removesuffix(".weight") for n in ck.adapters]
    tensors, facts = {}, {}
    for name in ck.tensors:  # in the checkpoint's order, which the facts keep
        ad = ck.adapters[name]
        module = name.removesuffix(".weight")
        lora_a, lora_b = (ad.b, ad.a) if ad.kind == "embedding" else (ad.a.T, ad.b.T)
        tensors[module + ".lora_a"], tensors[module + ".lora_b"] = lora_a, lora_b
        implied = "embedding" if module.rpartition(".")[2] in EMBEDDINGS else "linear"
        own = {"dtype": ck.tensors[name].dtype, **({"kind": ad.kind} if ad.kind != implied else {})}
        if (ad.scaling, ad.alpha) != ("alpha", ad.scale) or type(ad.alpha) is not float:
            own.update(alpha=ad.alpha, scaling=ad.scaling)
        facts[name] = own
    mine = ck.layout.of(NAME)
    carried = mine.facts if mine is not None and mine.variant == VARIANT else {}
    metadata = {**FORMAT_METADATA, **carried.get("metadata", {}), META_KEY: graph.to_json(ck, "an mlx-lm adapters file", NAME),
                ADAPTERS_KEY: json.dumps(facts, separators=(",", ":"))}
    config = _config(carried, sorted(ck.adapters), modules, ranks[0] if ranks else 0, scales[0] if scales else 0.0)
    path.mkdir()
    safetensors_io.write_file(path / WEIGHTS, dict(sorted(tensors.items())), metadata)
    safetensors_io.write_bytes(path / CONFIG, (json.dumps(config, indent=4) + "\n").encode())


def _config(carried: dict, names: list[str], modules: list[str], rank: int, scale: float) -> dict:
    """``adapter_config.json``: the one read, with the LoRA settings these adapters have.
    ``num_layers`` is kept for the same adapters, else -1 (every block: a LoRA layer
    given no weights adds nothing)."""
    config = dict(carried.get("config") or {"fine_tune_type": "lora"})
    lora = dict(config.get("lora_parameters") or {})
    keys = sorted({m.group("key") if (m := BLOCK.match(module)) else module for module in modules})
    same = carried.get("adapters") == names
    if not (same and sorted(lora.get("keys") or []) == keys):
        lora["keys"] = keys
    if not (same and isinstance(config.get("num_layers"), int)):
        config["num_layers"] = -1
    lora.update(rank=rank, scale=scale, dropout=lora.get("dropout", 0.0))
    config["lora_parameters"] = lora
    return config
