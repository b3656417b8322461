"""SwiftKV students: which ``*_swiftkv`` tensors each variant has, and the conversions.

A ``Plan`` says what a student is: variant A (upstream: layers ``[nkv, n_layer)`` take
their KV from ``norm_swiftkv`` of the hidden state after layer ``nkv - 1``, groups of
``g`` consecutive layers sharing one k/v projection) or variant B (the fork's
``kv_sharing_map``: consumer layer -> producer layer, optionally with MLP and layernorm
copies). From a plan come the student's extra tensors (and which teacher tensors each
starts as), its KV sharing edges and its config fields; the same plan checks a student
read from disk, initialises one from a teacher, and is compared with the map a user asks
for. The canonical checkpoint keeps ``num_key_value_layers`` / ``key_value_group_size``
(A) as hyper-parameters and the map (B, and A's groups) as ``kv_sharing``.
"""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

import attrs
from ckpt_core import Arch, Checkpoint, CkptWarning, CorruptInput, LossyConversion, Tensor, UsageError
from ckpt_core import dtypes

from .families import NORM_SWIFTKV, NORM_SWIFTKV_SOURCE, SWIFTKV_TENSORS

if TYPE_CHECKING:
    import numpy as np

A_PARAMS = ("num_key_value_layers", "key_value_group_size")
# config.json fields that only a SwiftKV student has (dropped when writing a teacher)
CONFIG_FIELDS = ("swiftkv", "kv_sharing_map", "num_key_value_layers", "key_value_group_size",
                 "mlp_tuning_enabled", "layernorm_tuning_enabled")
LAYER = re.compile(r"model\.layers\.(\d+)\.")
AVERAGED = ("F16", "BF16", "F32")


@attrs.frozen
class Plan:
    """A SwiftKV student's structure (see the module docstring)."""

    variant: str  # "A" or "B"
    n_layer: int
    num_kv_layers: int = 0  # A
    group_size: int = 1  # A
    kv_map: dict[int, int] = attrs.field(factory=dict)  # B
    mlp: bool = False  # B
    layernorm: bool = False  # B

    def describe(self) -> str:
        if self.variant == "A":
            return f"num_key_value_layers={self.num_kv_layers}, key_value_group_size={self.group_size}"
        return f"kv_sharing_map {self.kv_map}"

    def same_structure(self, other: Plan) -> bool:
        if self.variant != other.variant:
            return False
        if self.variant == "A":
            return (self.num_kv_layers, self.group_size) == (other.num_kv_layers, other.group_size)
        return self.kv_map == other.kv_map

    def check(self, error=UsageError, where: str = "") -> None:
        """Raise ``error`` when the plan does not fit ``n_layer`` layers."""
        prefix = f"{where}: " if where else ""
        if self.variant == "A":
            nkv, g = self.num_kv_layers, self.group_size
            if not (isinstance(nkv, int) and isinstance(g, int) and 1 <= nkv < self.n_layer and g >= 1):
                raise error(f"{prefix}num_key_value_layers={nkv!r}, key_value_group_size={g!r}: need 1 <= "
                            f"num_key_value_layers < {self.n_layer} layers and a group size >= 1")
            if (self.n_layer - nkv) % g:
                raise error(f"{prefix}key_value_group_size={g} does not divide the {self.n_layer - nkv} layers after "
                            f"num_key_value_layers={nkv}")
            return
        if not self.kv_map:
            raise error(f"{prefix}kv_sharing_map is empty: name at least one consumer layer")
        for consumer, producer in self.kv_map.items():
            if not 0 <= producer < consumer < self.n_layer:
                raise error(f"{prefix}kv_sharing_map entry {consumer}: {producer} must map a layer to an earlier one "
                            f"(layers 0..{self.n_layer - 1})")

    def kv_sharing(self) -> dict[int, int]:
        """Consumer layer -> the layer whose KV cache it reuses (A: a group's leader), by
        consumer (config.json is written with sorted keys)."""
        if self.variant == "B":
            return dict(sorted(self.kv_map.items()))
        nkv, g = self.num_kv_layers, self.group_size
        return {i: i - (i - nkv) % g for i in range(nkv, self.n_layer) if (i - nkv) % g}

    def config(self) -> dict[str, Any]:
        """The student's own config.json fields."""
        if self.variant == "A":
            return {"swiftkv": True, "num_key_value_layers": self.num_kv_layers, "key_value_group_size": self.group_size}
        return {"swiftkv": True, "kv_sharing_map": {str(c): p for c, p in self.kv_map.items()},
                "mlp_tuning_enabled": self.mlp, "layernorm_tuning_enabled": self.layernorm}

    def tensors(self, teacher: list[str] | dict) -> dict[str, list[str]]:
        """SwiftKV tensor -> the teacher tensors it starts as (several: their mean), by layer.
        A tensor whose teacher source is absent (a bias the model has not) is not planned."""
        have = set(teacher)
        out: dict[str, list[str]] = {}
        if self.variant == "A":
            out[NORM_SWIFTKV] = [NORM_SWIFTKV_SOURCE.replace("{i}", str(self.num_kv_layers))]
            layers = range(self.num_kv_layers, self.n_layer)
        else:
            layers = sorted(self.kv_map)
        for i in layers:
            roles = self._roles(i)
            for name, (source, role) in SWIFTKV_TENSORS.items():
                if role in roles and f"model.layers.{i}.{source}" in have:
                    group = range(i, i + self.group_size) if role == "kv" else [i]
                    out[f"model.layers.{i}.{name}"] = [f"model.layers.{j}.{source}" for j in group]
        return out

    def _roles(self, i: int) -> set[str]:
        if self.variant == "A":
            return {"query", "kv"} if (i - self.num_kv_layers) % self.group_size == 0 else {"query"}
        return {"query"} | ({"mlp"} if self.mlp else set()) | ({"layernorm"} if self.layernorm else set())


def is_swiftkv_name(name: str) -> bool:
    return "swiftkv" in name


def n_layer_of(names) -> int:
    return max((int(m.group(1)) + 1 for n in names if (m := LAYER.match(n))), default=0)


def layer_map(value, error=UsageError) -> dict[int, int]:
    """A kv_sharing_map with int keys, from an option or config value (JSON keys are strings)."""
    if not isinstance(value, dict):
        raise error(f"kv_sharing_map must be a mapping of layer numbers, such as {{12: 11}}, not {value!r}")
    out = {}
    for key, producer in value.items():
        try:
            consumer = int(key)
        except (TypeError, ValueError):
            consumer = None
        if consumer is None or str(consumer) != str(key).strip() or type(producer) is not int:
            raise error(f"kv_sharing_map entry {key!r}: {producer!r} is not a layer number: layer number")
        out[consumer] = producer
    return dict(sorted(out.items()))


def from_config(config: dict, n_layer: int, where: str) -> Plan:
    """The plan a SwiftKV config.json states (CorruptInput when it states none or a bad one)."""
    if "kv_sharing_map" in config:
        plan = Plan("B", n_layer, kv_map=layer_map(config["kv_sharing_map"], CorruptInput),
                    mlp=config.get("mlp_tuning_enabled") is True, layernorm=config.get("layernorm_tuning_enabled") is True)
    elif "num_key_value_layers" in config:
        plan = Plan("A", n_layer, config["num_key_value_layers"], config.get("key_value_group_size", 1))
    else:
        raise CorruptInput(f"{where}: a SwiftKV config.json needs kv_sharing_map (variant B) or "
                           "num_key_value_layers (variant A); it has neither")
    plan.check(CorruptInput, where)
    return plan


def from_options(options: dict, n_layer: int) -> Plan | None:
    """The plan ``--option`` values ask for, or None when they ask for none."""
    if "kv_sharing_map" in options:
        if "key_value_group_size" in options:
            raise UsageError("key_value_group_size belongs to variant A (num_key_value_layers); kv_sharing_map is variant B")
        plan = Plan("B", n_layer, kv_map=layer_map(options["kv_sharing_map"]),
                    mlp=flag(options, "mlp_tuning_enabled"), layernorm=flag(options, "layernorm_tuning_enabled"))
    elif "num_key_value_layers" in options:
        if "mlp_tuning_enabled" in options or "layernorm_tuning_enabled" in options:
            raise UsageError("mlp_tuning_enabled and layernorm_tuning_enabled belong to variant B (kv_sharing_map)")
        plan = Plan("A", n_layer, options["num_key_value_layers"], options.get("key_value_group_size", 1))
    elif "key_value_group_size" in options:
        raise UsageError("key_value_group_size needs num_key_value_layers")
    else:
        return None
    plan.check()
    return plan


def flag(options: dict, name: str) -> bool:
    """A true/false option (UsageError for anything else)."""
    value = options.get(name, False)
    if not isinstance(value, bool):
        raise UsageError(f"option {name} takes true or false, not {value!r}")
    return value


def from_checkpoint(ck: Checkpoint, asked: Plan | None = None) -> Plan | None:
    """The plan of a canonical student (None for a teacher: no SwiftKV tensors). A
    variant B student without a map (a DeepSpeed state has none) takes the one asked for."""
    names = [n for n in ck.tensors if is_swiftkv_name(n)]
    if not names:
        return None
    n_layer = n_layer_of(ck.tensors)
    if NORM_SWIFTKV in ck.tensors:
        params = ck.arch.params
        if not all(isinstance(params.get(p), int) for p in A_PARAMS):
            raise CorruptInput(f"a variant A SwiftKV checkpoint ({NORM_SWIFTKV}) needs the hyper-parameters "
                               f"{' and '.join(A_PARAMS)}")
        plan = Plan("A", n_layer, params["num_key_value_layers"], params["key_value_group_size"])
    else:
        kv_map = ck.kv_sharing or (asked.kv_map if asked is not None and asked.variant == "B" else {})
        plan = Plan("B", n_layer, kv_map=dict(kv_map),
                    mlp=any(".mlp." in n for n in names), layernorm=any("layernorm_swiftkv" in n for n in names))
        if not plan.kv_map:
            raise UsageError(f"{len(names)} SwiftKV tensors ({names[0]}, ...) but no KV sharing map: "
                             "give --option kv_sharing_map=... (variant B)")
    plan.check(CorruptInput, "SwiftKV checkpoint")
    return plan


def check_structure(plan: Plan, names, where: str) -> None:
    """CorruptInput unless the SwiftKV tensors are exactly those the plan has."""
    expected = set(plan.tensors(names))
    found = {n for n in names if is_swiftkv_name(n)}
    missing, stray = sorted(expected - found), sorted(found - expected)
    if missing or stray:
        what = f"lacks {missing[0]}" if missing else f"has {stray[0]}, which it should not"
        raise CorruptInput(f"{where}: SwiftKV variant {plan.variant} ({plan.describe()}) {what} "
                           f"({len(missing)} missing, {len(stray)} unexpected)")


def check_matches(own: Plan, asked: Plan) -> None:
    """Refuse a map (or nkv/group) that differs from the checkpoint's own, naming both."""
    if not own.same_structure(asked):
        raise UsageError(f"the SwiftKV structure asked for ({asked.describe()}) does not match the checkpoint's own "
                         f"(variant {own.variant}: {own.describe()}); drop the option or convert the teacher instead")
    if asked.variant == "B" and (asked.mlp, asked.layernorm) != (own.mlp, own.layernorm) and (asked.mlp or asked.layernorm):
        raise UsageError(f"the tuning flags asked for (mlp {asked.mlp}, layernorm {asked.layernorm}) do not match the "
                         f"checkpoint's own (mlp {own.mlp}, layernorm {own.layernorm})")


def trainable(names) -> tuple[str, ...]:
    """What SwiftKV training updates: every tensor with ``swiftkv`` in its name."""
    return tuple(n for n in names if is_swiftkv_name(n))


# -- teacher -> student ---------------------------------------------------------------------


def init_student(ck: Checkpoint, plan: Plan) -> Checkpoint:
    """The student training starts from: the teacher plus SwiftKV tensors copied from it
    (variant A's k/v: the mean over each group, in float32, cast back)."""
    sources = plan.tensors(ck.tensors)
    new = {name: _mean([ck.tensors[s] for s in group], name) for name, group in sources.items()}
    if plan.group_size > 1:
        warnings.warn(f"variant A k/v projections averaged over groups of {plan.group_size} layers in float32",
                      CkptWarning, stacklevel=2)
    tensors = _insert_by_layer(ck.tensors, new)
    params = dict(ck.arch.params)
    if plan.variant == "A":
        params.update(num_key_value_layers=plan.num_kv_layers, key_value_group_size=plan.group_size)
    return ck.evolve(arch=Arch(ck.arch.family, params), tensors=tensors, kv_sharing=plan.kv_sharing(),
                     trainable=trainable(tensors))


def _mean(group: list[Tensor], name: str) -> Tensor:
    if len(group) == 1:
        return group[0]  # a copy: the same bytes
    dtype = group[0].dtype
    if dtype not in AVERAGED or any(t.dtype != dtype or t.shape != group[0].shape for t in group):
        raise UsageError(f"{name}: cannot average {', '.join(sorted({t.dtype for t in group}))} tensors of the group; "
                         "use key_value_group_size=1")

    def compute() -> np.ndarray:
        import numpy as np

        total = np.zeros(group[0].shape, dtype=np.float32)
        for t in group:
            total += t.to_float32()
        return dtypes.from_float32(total / np.float32(len(group)), dtype)

    return Tensor.from_loader(dtype, group[0].shape, compute)


def _insert_by_layer(tensors: dict[str, Tensor], new: dict[str, Tensor]) -> dict[str, Tensor]:
    """``tensors`` with each layer's new tensors after that layer's last one, and
    ``norm_swiftkv`` after ``model.norm.weight`` (anything else at the end)."""
    last: dict[int, str] = {}
    for name in tensors:
        if m := LAYER.match(name):
            last[int(m.group(1))] = name
    after: dict[str, list[str]] = {}
    for name in new:
        m = LAYER.match(name)
        anchor = last.get(int(m.group(1))) if m else "model.norm.weight"
        after.setdefault(anchor if anchor in tensors else "", []).append(name)
    out: dict[str, Tensor] = {}
    for name, t in tensors.items():
        out[name] = t
        out.update((n, new[n]) for n in after.get(name, []))
    out.update((n, new[n]) for n in after.get("", []))
    return out


# -- student -> teacher ---------------------------------------------------------------------


def student_parts(ck: Checkpoint) -> list[str]:
    """What a teacher directory has no place for, one description each (empty: none)."""
    parts = []
    names = [n for n in ck.tensors if is_swiftkv_name(n)]
    if names:
        parts.append(f"{len(names)} SwiftKV tensor(s) ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if ck.kv_sharing:
        parts.append(f"the KV sharing map {ck.kv_sharing}")
    if ck.trainable is not None:
        parts.append(f"the trainable set ({len(ck.trainable)} tensors)")
    kept = [p for p in A_PARAMS if p in ck.arch.params]
    if kept:
        parts.append(f"the hyper-parameters {', '.join(kept)}")
    return parts


def drop_student(ck: Checkpoint, allowed: bool) -> Checkpoint:
    """The teacher inside a student: LossyConversion unless ``allowed`` (drop_swiftkv)."""
    parts = student_parts(ck)
    if not parts:
        return ck
    if not allowed:
        raise LossyConversion(f"a teacher (hf) directory cannot hold {'; '.join(parts)}; pass --option "
                              "drop_swiftkv=true to write the teacher without them. Nothing was written.",
                              [f"{p} (allow with --option drop_swiftkv=true)" for p in parts])
    params = {k: v for k, v in ck.arch.params.items() if k not in A_PARAMS}
    return ck.evolve(arch=Arch(ck.arch.family, params), kv_sharing={}, trainable=None,
                     tensors={n: t for n, t in ck.tensors.items() if not is_swiftkv_name(n)})
