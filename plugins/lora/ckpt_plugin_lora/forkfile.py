"""The nanoGPT LoRA fork's ``ckpt.pt``: read as a canonical ``gpt`` checkpoint, written back.

Three variants are read (``layout.variant``):

- ``lora``: the nanoGPT dict whose ``model`` is the LoRA state dict (``main_weight``,
  ``lora_A``, ``lora_B``): base tensors under canonical names, adapters as edges;
- ``merged``: the fork's "universal" dict, ``model`` merged to plain names, with the LoRA
  ``model_args`` and ``param_names``: read as it is (its head/embedding mismatch kept, and
  said);
- ``plain``: the fork's dict with LoRA switched off (rank 0, no adapter);
- ``state_dict``: a bare LoRA state dict (``torch.save(model.state_dict())``), which does
  not record ``lora_alpha``: give it with ``--option alpha=...``.

Writing produces the ``lora`` variant (or ``merged`` again for a merged file without
adapters). What the fork's own fields cannot say (an adapter's other scaling or kind,
hyper-parameters without a ``model_args`` key, train-state fields nanoGPT has no slot for)
goes under one extra top-level key, ``ckpt_core``, only when needed.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from ckpt_core import (Adapter, Arch, Checkpoint, CkptWarning, CorruptInput, Layout, LossyConversion, OptimizerState, Tensor,
                       TrainState, UsageError, dtypes)
from ckpt_core.gpt import adamw_param_order
from ckpt_core import torchfile

from . import keys, optimizer, trees

NAME = "lora-nanogpt"
EXT = "ckpt_core"
PREFIX = "_orig_mod."
LORA_KEY = re.compile(r"(?P<m>.+)\.(main_weight\.(weight|bias)|lora_A\.weight|lora_B\.weight)\Z")
# model_args key -> canonical hyper-parameter
ARCH_KEYS = {"n_layer": "n_layer", "n_head": "n_head", "n_embd": "d_model", "block_size": "block_size",
             "vocab_size": "vocab_size", "n_hidden": "d_ff", "bias": "bias", "dropout": "dropout"}
TRAIN_EXTRAS = ("epoch", "metrics", "scheduler", "rng", "data_position", "extra")
BUFFERS = (".attn.bias", ".rotary_emb.inv_freq")


def _kind(module: str, ext_adapters: dict) -> str:
    return ext_adapters.get(module + ".weight", {}).get("kind") or keys.fork_target(module) or "linear"


def _parts(path: Path, obj: Any) -> tuple[dict, dict, str]:
    """``(top-level dict, state dict, variant)`` of a loaded ``ckpt.pt`` (``torchfile.load``)."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        top, state = obj, obj["model"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        top, state = {}, obj
    else:
        raise CorruptInput(f"{path}: neither a nanoGPT checkpoint dict (with 'model') nor a state dict")
    bad = [k for k, v in state.items() if not (isinstance(k, str) and isinstance(v, Tensor))]
    if bad:
        raise CorruptInput(f"{path}: model entry {bad[0]!r} is not a named tensor")
    if not state:
        raise CorruptInput(f"{path}: the model state dict is empty")
    args = top.get("model_args") or {}
    if not top:
        variant = "state_dict"
    elif any(LORA_KEY.match(k) for k in state):
        variant = "lora"
    elif int(args.get("attn_lora_rank") or 0) > 0 or args.get("embedding_mode") in ("lora", "lora_only"):
        variant = "merged"
    else:
        variant = "plain"  # the fork's model_args, no LoRA module
    return top, state, variant


def read(path: Path, alpha: float | None = None) -> Checkpoint:
    """The fork's ``ckpt.pt`` (any variant) as a canonical checkpoint; tensors stay on disk."""
    top, state, variant = _parts(path, torchfile.load(path))
    ext = _ext(path, top)
    ext_adapters = ext.get("adapters", {})
    model_args = top.get("model_args") or {}
    prefix = PREFIX if all(k.startswith(PREFIX) for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items()}

    tensors: dict[str, Tensor] = {}
    parts: dict[str, dict[str, Tensor]] = {}
    ties: dict[str, str] = dict(ext.get("ties", {}))
    first: dict[tuple, str] = {}
    lora_modules: list[str] = []
    for key, t in state.items():
        m = LORA_KEY.match(key)
        if m:
            if m["m"] not in lora_modules:
                lora_modules.append(m["m"])
            name, part = keys.match(keys.FORK[_kind(m["m"], ext_adapters)], key) or (None, None)
            if name is None:
                raise CorruptInput(f"{path}: {key!r} does not fit a {_kind(m['m'], ext_adapters)} LoRA module")
        else:
            name, part = key, "base"
        if part != "base":
            parts.setdefault(name, {})[part[0]] = keys.orient(t, part)
            continue
        if name in ties:
            continue
        if t.numel and id(t) in first:  # the same tensor under two keys: a tie
            ties[name] = first[id(t)]
            continue
        first.setdefault(id(t), name)
        if name in tensors:
            raise CorruptInput(f"{path}: two entries map to {name!r}")
        tensors[name] = t

    alpha_default = model_args.get("lora_alpha", alpha)
    adapters, lora_only = {}, []
    for base, p in parts.items():
        if set(p) != {"a", "b"}:
            raise CorruptInput(f"{path}: the adapter on {base!r} has only lora_{'A' if 'a' in p else 'B'}")
        e = ext_adapters.get(base, {})
        a_alpha = e.get("alpha", alpha_default)
        if a_alpha is None:
            raise UsageError(f"{path}: a bare LoRA state dict does not record lora_alpha; pass --option alpha=<lora_alpha>")
        if base not in tensors and base not in ties:  # embedding_mode lora_only: no main weight
            tensors[base] = _zeros(p["b"].dtype, (p["b"].shape[0], p["a"].shape[1]))
            lora_only.append(base)
        kind = e.get("kind") or keys.fork_target(keys.module_of(base)) or "linear"
        adapters[base] = Adapter(p["a"], p["b"], a_alpha if "alpha" in e else float(a_alpha), e.get("scaling", "alpha/rank"), kind)
    rank0 = [m for m in lora_modules if m + ".weight" not in parts]

    if variant == "merged":
        lost = [f"transformer.h.{i}.attn.c_attn.weight" for i in range(int(model_args.get("n_layer") or 0))
                if f"transformer.h.{i}.attn.c_attn.weight" not in tensors]
        if lost and int(model_args.get("attn_lora_rank") or 0) > 0:
            raise CorruptInput(f"{path}: the fork's merged save dropped {lost[0]} (a layer resized to LoRA rank 0 loses its "
                               "weight in the fork's merge); the weight is not in this file, read the LoRA state dict instead")
    if variant == "merged" and model_args.get("embedding_mode") == "lora" and "lm_head.weight" in tensors:
        warnings.warn(f"{path.name}: the fork's merged save left lm_head.weight unmerged while transformer.wte.weight "
                      "carries the embedding delta; both kept as two untied tensors", CkptWarning, stacklevel=2)

    arch_params = ext["arch"] if "arch" in ext else {ARCH_KEYS[k]: v for k, v in model_args.items() if k in ARCH_KEYS}
    param_names = top.get("param_names")
    facts = {
        "prefix": prefix,
        "model_args": model_args,
        "top_keys": [k for k in top if k != EXT],
        "rank0_modules": rank0,
        "lora_only": lora_only,
        "param_names": isinstance(param_names, list),
    }
    if top.get("optimizer", ...) in (None, {}):  # saved as "nothing": written back so while no state fills it
        facts["no_optimizer"] = {k: top[k] for k in ("optimizer", "param_names") if k in top}
    if variant == "merged" and isinstance(param_names, list):
        canonical = _canonical_param(ext_adapters)
        facts["lora_params"] = [n for n, _ in map(canonical, param_names) if "::" in n]  # adapters the save merged away
    ck = Checkpoint(
        arch=Arch("gpt", arch_params),
        tensors=tensors,
        ties=ties,
        adapters=adapters,
        train_state=_train_state(path, top, ext, state, _ties_of(state, ext)),
        layout=Layout(NAME, variant, facts),
    )
    return ck


def _zeros(dtype: str, shape: tuple[int, int]) -> Tensor:
    """A lazy tensor of zeros (the main weight an embedding_mode lora_only model has not)."""
    nbytes = shape[0] * shape[1] * dtypes.get(dtype).itemsize
    return Tensor.from_loader(dtype, shape, lambda: bytes(nbytes))


def _canonical_param(ext_adapters: dict):
    """Upstream parameter name -> (canonical parameter name, stored transposed?)."""
    def canonical(name: str) -> tuple[str, bool]:
        name = name.removeprefix(PREFIX)
        m = LORA_KEY.match(name)
        if not m:
            return name, False
        found = keys.match(keys.FORK[_kind(m["m"], ext_adapters)], name)
        if found is None:
            return name, False
        base, part = found
        suffix = {"base": "", "a": "::lora_a", "aT": "::lora_a", "b": "::lora_b", "bT": "::lora_b"}[part]
        return base + suffix, part.endswith("T")
    return canonical


def _train_state(path: Path, top: dict, ext: dict, state: dict, ties: dict) -> TrainState | None:
    slots = ("iter_num", "best_val_loss", "config", "optimizer")
    if not any(k in top for k in slots) and "train_state" not in ext:
        return None
    opt = None
    if isinstance(top.get("optimizer"), dict) and top["optimizer"]:  # {} or None: no optimizer state
        sd = top["optimizer"]
        names = top.get("param_names")
        if not isinstance(names, list):
            params = [(k, len(v.shape)) for k, v in state.items() if not k.endswith(BUFFERS) and k not in ties]
            names = adamw_param_order(params)
        if len(names) != optimizer.positions(sd):
            warnings.warn(f"optimizer state dropped: {path.name} has state for {optimizer.positions(sd)} parameters, the model "
                          f"has {len(names)} and no param_names says which (frozen weights?)", CkptWarning, stacklevel=3)
        else:
            opt = optimizer.read(sd, names, _canonical_param(ext.get("adapters", {})))
            o = ext.get("optimizer", {})
            opt = OptimizerState(o.get("kind", opt.kind), opt.param_state, opt.groups, o.get("resumable", True),
                                 o.get("extra", {}))
    config = ext["config"] if "config" in ext else top.get("config", {})
    return TrainState(step=top.get("iter_num"), best_metric=top.get("best_val_loss"),
                      config=config, optimizer=opt, **ext.get("train_state", {}))


def train_state(path: Path) -> TrainState | None:
    """The training state of ``ckpt.pt``, its tensors left unread."""
    top, state, _ = _parts(path, torchfile.load(path))
    ext = _ext(path, top)
    prefix = PREFIX if all(k.startswith(PREFIX) for k in state) else ""
    state = {k[len(prefix):]: v for k, v in state.items()}
    ties = _ties_of(state, ext)
    return _train_state(path, top, ext, state, ties)


def _ext(path: Path, top: dict) -> dict:
    """The ``ckpt_core`` entry: what the fork's own fields cannot say (empty if absent)."""
    if EXT not in top:
        return {}
    try:
        ext = trees.unpack(top[EXT])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptInput(f"{path}: the {EXT!r} entry is malformed ({type(e).__name__}: {e})") from None
    if not isinstance(ext, dict):
        raise CorruptInput(f"{path}: the {EXT!r} entry is not a dict")
    return ext


def _ties_of(state: dict, ext: dict) -> dict[str, str]:
    ties, first = dict(ext.get("ties", {})), {}
    for key, t in state.items():
        if t.numel and id(t) in first:
            ties[key] = first[id(t)]
        first.setdefault(id(t), key)
    return ties


# -- writing -------------------------------------------------------------------------------


def _fork_name(name: str, lora_modules: dict[str, str]) -> str:
    """The state-dict key of canonical ``name`` (a LoRA module's weight and bias move
    under ``main_weight``)."""
    module, _, leaf = name.rpartition(".")
    if module in lora_modules and leaf in ("weight", "bias"):
        return keys.upstream(keys.FORK[lora_modules[module]], name, "base") or name
    return name


def _warn_if_activation_differs(ck: Checkpoint) -> None:
    """Warn when ``ck`` comes from an HF GPT-2 (a peft base) whose activation is not the
    fork's exact GELU (the ``hf`` reader keeps any other as the hyper-parameter
    ``activation_function``: HF's default ``gelu_new`` is the tanh approximation), so the
    same weights give slightly different outputs in the fork's model."""
    activation = ck.arch.params.get("activation_function", "gelu")
    if activation != "gelu":
        warnings.warn(f"the HF GPT-2 base computes activation_function={activation!r}, the fork's model exact GELU: "
                      "the weights are copied exactly, but the fork's outputs differ slightly from transformers'",
                      CkptWarning, stacklevel=4)


def write(ck: Checkpoint, path: Path) -> None:
    """Write ``ck`` as the fork's ``ckpt.pt`` at ``path``."""

    own = ck.layout.of(NAME)
    facts = own.facts if own else {}
    merged_variant = own is not None and own.variant == "merged" and not ck.adapters
    names = ck.names()
    for base, ad in ck.adapters.items():
        if keys.module_of(base) is None:
            raise LossyConversion(f"{NAME} holds adapters on '<module>.weight' tensors only; the adapter on {base!r} "
                                  "would be lost (merge it with --merge-adapters). Nothing was written.")
    lora_modules = {keys.module_of(b): ad.kind for b, ad in ck.adapters.items()}
    if not merged_variant:
        for m in facts.get("rank0_modules", []):
            if m + ".weight" in names and m not in lora_modules:
                lora_modules[m] = keys.fork_target(m) or "linear"
    lora_only = [b for b in facts.get("lora_only", []) if b in ck.adapters and b in ck.tensors
                 and b not in ck.ties.values() and not ck.tensors[b].raw().any()]

    if not merged_variant and "lm_head.weight" in ck.tensors and "transformer.wte.weight" in ck.adapters and not lora_only:
        warnings.warn("lm_head.weight is stored apart from transformer.wte.weight, but the fork's LoRA model ties the head "
                      "to the embedding's main weight: loading this file there keeps only one of them", CkptWarning, stacklevel=3)
    _warn_if_activation_differs(ck)
    model_args, ext = _model_args(ck, facts, lora_only, merged_variant)
    for base, ad in ck.adapters.items():
        expected = {"alpha": float(model_args["lora_alpha"]), "scaling": "alpha/rank",
                    "kind": keys.fork_target(keys.module_of(base)) or "linear"}
        actual = {"alpha": ad.alpha, "scaling": ad.scaling, "kind": ad.kind}
        if actual != expected or type(ad.alpha) is not float:
            ext.setdefault("adapters", {})[base] = actual

    prefix = facts.get("prefix", "")
    state: dict[str, Any] = {}
    torch_of: dict[str, Any] = {}
    modules = [n.rpartition(".")[0] for n in names]
    for i, name in enumerate(names):
        if name in ck.ties:
            torch_of[name] = torch_of[ck.ties[name]]
        elif name not in lora_only:
            torch_of[name] = ck.tensors[name]
        if name in torch_of:
            state[prefix + _fork_name(name, lora_modules)] = torch_of[name]
        if i + 1 < len(names) and modules[i + 1] == modules[i]:
            continue  # a module's adapter follows its last tensor, as in the fork's state dict
        for base in (n for n in names if n in ck.adapters and n.rpartition(".")[0] == modules[i]):
            ad = ck.adapters[base]
            for pattern, (_, part) in keys.FORK[ad.kind].items():
                if part in ("a", "b", "aT", "bT"):
                    t = ad.a if part[0] == "a" else ad.b
                    state[prefix + pattern.format(m=modules[i])] = t.T if part.endswith("T") else t
    empty_ties = {a: t for a, t in ck.ties.items() if ck.tensors[t].numel == 0}
    if empty_ties:
        ext["ties"] = empty_ties

    top: dict[str, Any] = {"model": state}
    _write_train_state(ck, facts, top, ext, lora_modules, state, prefix)
    if "optimizer" not in top:
        top.update(facts.get("no_optimizer", {}))
    top["model_args"] = model_args
    order = facts.get("top_keys") or ["model", "optimizer", "model_args", "iter_num", "best_val_loss", "config", "param_names"]
    out = {k: top[k] for k in order if k in top}
    out.update((k, v) for k, v in top.items() if k not in out)
    if ext:
        out[EXT] = trees.pack(ext)
    torchfile.save(out, path)


def _model_args(ck: Checkpoint, facts: dict, lora_only: list[str], merged_variant: bool) -> tuple[dict, dict]:
    """The fork's ``model_args`` for ``ck``, and the extension entries it needs. A merged
    (universal) save keeps its LoRA arguments: the fork loads it into its LoRA model."""
    ext: dict[str, Any] = {}
    old = dict(facts.get("model_args", {}))
    params = ck.arch.params
    names = ck.names()
    args = dict(old)
    back = {v: k for k, v in ARCH_KEYS.items()}
    args.update((back[k], v) for k, v in params.items() if k in back)
    if not old:  # from another format: the fork's other arguments, as its model would have them
        rotary = "transformer.wpe.weight" not in names
        args.update(bias="transformer.h.0.attn.c_attn.bias" in names, dropout=0.0, use_rotary_embeddings=rotary,
                    rotary_base=10000, rotary_max_position_embeddings=params.get("block_size"))
    if not merged_variant:
        args.update(_lora_args(ck, facts, old, bool(lora_only)))
    derived = {ARCH_KEYS[k]: v for k, v in args.items() if k in ARCH_KEYS}
    if list(derived.items()) != list(params.items()):
        ext["arch"] = params
    return args, ext


def _lora_args(ck: Checkpoint, facts: dict, old: dict, lora_only: bool) -> dict:
    """``attn_lora_rank``, ``embedding_mode``, ``embedding_rank``, ``lora_alpha`` for the
    adapters ``ck`` has (a layer kept at rank 0 keeps the global rank)."""
    by_kind: dict[str, list] = {"linear": [], "embedding": []}
    for base, ad in ck.adapters.items():
        kind = keys.fork_target(keys.module_of(base))
        if kind:
            by_kind[kind].append(ad)
    attn, emb = by_kind["linear"], by_kind["embedding"]
    rank0 = [m for m in facts.get("rank0_modules", []) if keys.fork_target(m) == "linear" and m + ".weight" in ck.names()]
    out = {}
    if attn:
        out["attn_lora_rank"] = max(ad.rank for ad in attn)
    elif not rank0:
        out["attn_lora_rank"] = 0
    if emb:
        out["embedding_mode"] = "lora_only" if lora_only else "lora"
        out["embedding_rank"] = emb[0].rank
    else:
        if old.get("embedding_mode") in (None, "lora", "lora_only"):
            out["embedding_mode"] = "default"
        out["embedding_rank"] = old.get("embedding_rank", 0)
    plain = [ad for ad in attn + emb if ad.scaling == "alpha/rank"]
    alpha = plain[0].alpha if plain else old.get("lora_alpha", 1.0)
    out["lora_alpha"] = old["lora_alpha"] if "lora_alpha" in old and float(old["lora_alpha"]) == alpha else alpha
    return out


def _write_train_state(ck: Checkpoint, facts: dict, top: dict, ext: dict, lora_modules: dict, state: dict, prefix: str) -> None:
    ts = ck.train_state
    if ts is None:
        return
    written = False
    if ts.optimizer is not None:
        opt = _checked_optimizer(ck, facts)
        if opt is not None:
            def upstream(name: str) -> tuple[str, bool]:
                base, _, role = name.partition("::")
                if not role:
                    return prefix + _fork_name(base, lora_modules), False
                module = keys.module_of(base)
                kind = lora_modules.get(module) or keys.fork_target(module) or "linear"
                part = next(p for _, (_, p) in keys.FORK[kind].items() if p in (role[-1], role[-1] + "T"))
                key = keys.upstream(keys.FORK[kind], base, part)
                return prefix + key, part.endswith("T")
            sd, names = optimizer.write(opt, upstream)
            top["optimizer"] = sd
            default = adamw_param_order([(k, len(v.shape)) for k, v in state.items()
                                         if not k.endswith(BUFFERS) and not _is_alias(k, ck, lora_modules, prefix)])
            if facts.get("param_names", True) or names != default:
                top["param_names"] = names
            o = {}
            if opt.kind != optimizer.KIND:
                o["kind"] = opt.kind
            if not opt.resumable:
                o["resumable"] = False
            if opt.extra:
                o["extra"] = opt.extra
            if o:
                ext["optimizer"] = o
            written = True
    if ts.step is not None:
        top["iter_num"] = ts.step
        written = True
    if ts.best_metric is not None:
        top["best_val_loss"] = ts.best_metric
        written = True
    if not trees.native(ts.config):
        ext["config"] = ts.config
    elif ts.config or "config" in facts.get("top_keys", []):
        top["config"] = ts.config
        written = True
    defaults = TrainState()
    rest = {k: getattr(ts, k) for k in TRAIN_EXTRAS if getattr(ts, k) != getattr(defaults, k)}
    if rest or not written:
        ext["train_state"] = rest


def _is_alias(key: str, ck: Checkpoint, lora_modules: dict, prefix: str) -> bool:
    return any(prefix + _fork_name(a, lora_modules) == key for a in ck.ties)


def _checked_optimizer(ck: Checkpoint, facts: dict) -> OptimizerState | None:
    """The optimizer state if its parameters are this model's (by name and shape); else
    None, with a one-line warning (the fork does the same on load: a fresh optimizer)."""
    opt = ck.train_state.optimizer
    shapes = {n: ck.tensor(n).shape for n in ck.names()}
    for base, ad in ck.adapters.items():
        shapes[base + "::lora_a"], shapes[base + "::lora_b"] = ad.a.shape, ad.b.shape
    own = ck.layout.of(NAME)
    allowed = set(facts.get("lora_params", [])) if own is not None and own.variant == "merged" else set()
    used = [*opt.param_state, *(n for g in opt.groups for n in g.get("params", []))]
    unknown = sorted({n for n in used if n not in shapes and n not in allowed})
    wrong = sorted({n for n, slots in opt.param_state.items() if n in shapes for v in slots.values()
                    if isinstance(v, Tensor) and len(v.shape) == len(shapes[n]) >= 1 and v.shape != shapes[n]})
    if unknown or wrong:
        what = f"no parameter {unknown[0]!r}" if unknown else f"{wrong[0]!r} changed shape"
        warnings.warn(f"optimizer state dropped: the parameter set changed ({what}; "
                      f"{len(unknown) + len(wrong)} parameter(s) affected); training resumes with a fresh optimizer",
                      CkptWarning, stacklevel=4)
        return None
    return opt
