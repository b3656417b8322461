"""Hypothesis strategies for canonical checkpoints, for round-trip property tests.

Tensors carry random raw bytes (floats include NaN and inf bit patterns), so compare them
bit for bit (``ckpt_core.compare.differences``), never by value. Sizes stay small: a test
is about layouts and edges, not data volume.

The checkpoint features take ``None`` (sometimes, the default), ``True`` (always, where
the family allows it) or ``False`` (never). ``adapters_alone`` (adapters whose base
tensors are absent, as an adapter file holds them) defaults to ``False``: reading such a
base raises. ``checkpoints_for(spec)`` draws only what a format declares it can hold.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Collection

from hypothesis import reject
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from .. import dtypes as dtype_table
from ..model import SCALINGS, Adapter, Arch, Checkpoint, FormatSpec, OptimizerState, TrainState
from ..schema import OTHER_INDEXES, FamilySchema, TensorRule, expected_shape
from ..tensor import Tensor

# Keys that look like ckpt_core.tree's tags: trees must escape them.
TAG_KEYS = ("__tensor__", "__tuple__", "__bytes__", "__dict__")

_segment = st.from_regex(r"[a-z][a-z0-9_]{0,5}", fullmatch=True)
tensor_names = st.lists(_segment, min_size=1, max_size=3).map(".".join)
shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


def dtypes(allowed: Collection[str] | None = None) -> st.SearchStrategy[str]:
    """Safetensors dtype names: ``allowed`` ones, or the 15 standard ones (not C64)."""
    names = [d for d in dtype_table.DTYPES if d in (dtype_table.STANDARD_DTYPES if allowed is None else allowed)]
    if not names:
        raise InvalidArgument(f"no known dtype in {sorted(allowed)}")
    return st.sampled_from(names)


@st.composite
def tensors(draw, dtype: str | st.SearchStrategy[str] | None = None,
            shape: tuple[int, ...] | st.SearchStrategy[tuple[int, ...]] | None = None) -> Tensor:
    """A Tensor over random raw bytes; shapes include 0-d and empty ones by default.

    BOOL bytes are 0 or 1 only: other bytes are not booleans (torch would normalise them).
    """
    dtype = draw(dtypes() if dtype is None else dtype if isinstance(dtype, st.SearchStrategy) else st.just(dtype))
    shape = draw(shapes if shape is None else shape if isinstance(shape, st.SearchStrategy) else st.just(tuple(shape)))
    nbytes = math.prod(shape) * dtype_table.get(dtype).itemsize
    if dtype == "BOOL":
        data = bytes(draw(st.lists(st.integers(0, 1), min_size=nbytes, max_size=nbytes)))
    else:
        data = draw(st.binary(min_size=nbytes, max_size=nbytes))
    return Tensor.from_bytes(data, dtype, shape)


def trees(leaf_tensors: st.SearchStrategy[Tensor] | None = None) -> st.SearchStrategy:
    """Nested data as run configs and extras hold it: lists, tuples, bytes, str- and
    int-keyed dicts (with keys that look like ckpt_core.tree's tags), NaN and inf floats,
    and ``leaf_tensors`` when given."""
    leaves = (st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.floats()
              | st.text(max_size=6) | st.binary(max_size=6))
    if leaf_tensors is not None:
        leaves |= leaf_tensors
    keys = st.sampled_from(TAG_KEYS) | st.text(max_size=6)
    return st.recursive(leaves, lambda kids: (
        st.lists(kids, max_size=3)
        | st.lists(kids, max_size=3).map(tuple)
        | st.dictionaries(keys, kids, max_size=3)
        | st.dictionaries(st.integers(-3, 3), kids, max_size=3)), max_leaves=8)


def spec_families(spec: FormatSpec) -> tuple[str, ...]:
    """Families a format holds: ``"*"`` means generic and every installed family."""
    if "*" not in spec.families:
        return tuple(spec.families)
    from ..plugins import registry

    return ("generic", *sorted(registry().families))


def checkpoints_for(spec: FormatSpec, family: str | FamilySchema | None = None, **overrides) -> st.SearchStrategy[Checkpoint]:
    """Checkpoints that ``spec``'s format declares it can hold: its families (or
    ``family``), its dtypes, and each feature only if it is in its capabilities.
    ``overrides`` go to ``checkpoints`` (to narrow further, say ``dtypes=["F32"]``)."""
    caps = spec.capabilities
    kwargs = {"dtypes": spec.dtypes}
    for name, cap in (("adapters", "adapters"), ("ties", "ties"), ("train_state", "train_state"),
                      ("optimizer", "optimizer_state"), ("kv_sharing", "kv_sharing"),
                      ("trainable", "trainable"), ("extra", "extra"), ("adapters_alone", "adapters_alone")):
        kwargs[name] = None if cap in caps else False
    kwargs.update(overrides)
    families = [family] if family is not None else spec_families(spec)
    return st.one_of([checkpoints(family=f, **kwargs) for f in families])


@st.composite
def checkpoints(draw, family: str | FamilySchema | None = None, dtypes: Collection[str] | None = None,
                adapters: bool | None = None, ties: bool | None = None, train_state: bool | None = None,
                optimizer: bool | None = None, kv_sharing: bool | None = None, trainable: bool | None = None,
                extra: bool | None = None, adapters_alone: bool | None = False) -> Checkpoint:
    """A valid canonical Checkpoint.

    ``family`` None or ``"generic"``: arbitrary unique dotted names and shapes. A family
    name (installed) or FamilySchema: small hyper-parameters drawn for the names its shape
    expressions use, every required tensor, and some optional ones. Each feature is
    None (sometimes), True (always, where possible) or False (never); ``optimizer`` is
    the optimizer state inside the train state. ``adapters_alone``: the checkpoint is an
    adapter file's: its tensors are the adapters' bases, absent (no ties, no train state).
    """
    allowed = [d for d in dtype_table.DTYPES if d in (dtype_table.STANDARD_DTYPES if dtypes is None else dtypes)]
    floats = [d for d in allowed if dtype_table.get(d).is_float]
    if not allowed:
        raise InvalidArgument(f"no known dtype in {sorted(dtypes)}")
    if adapters and not floats:
        raise InvalidArgument("adapters=True needs a float dtype")
    schema = _schema(family)
    if schema is None:
        arch, specs, tie_map = _generic(draw, ties, need_2d=bool(adapters))
    else:
        arch, specs, tie_map = _family(draw, schema, ties)

    two_d = [name for name, shape in specs.items() if len(shape) == 2]
    bases = []
    if floats and two_d and adapters is not False:
        bases = draw(st.lists(st.sampled_from(two_d), unique=True, min_size=1 if adapters else 0, max_size=3))
    stored = {name: draw(tensors(st.sampled_from(floats) if name in bases else st.sampled_from(allowed), shape))
              for name, shape in specs.items()}
    names = [*stored, *tie_map]

    adapter_map = {}
    for base in bases:
        out, inp = specs[base]
        rank = draw(st.integers(1, 3))
        adapter_map[base] = Adapter(
            a=draw(tensors(st.sampled_from(floats), (rank, inp))),
            b=draw(tensors(st.sampled_from(floats), (out, rank))),
            alpha=draw(st.floats(0, 256)),
            scaling=draw(st.sampled_from(SCALINGS)),
            kind=draw(st.sampled_from(("linear", "embedding"))))

    n_layer = arch.params["n_layer"] if schema is not None else 8
    ck = Checkpoint(
        arch=arch,
        tensors=stored,
        ties=tie_map,
        kv_sharing=draw(_maybe(kv_sharing, st.dictionaries(
            st.integers(0, n_layer - 1), st.integers(0, n_layer - 1), min_size=1, max_size=3), {})),
        adapters=adapter_map,
        train_state=draw(_maybe(train_state, _train_states(list(stored), specs, allowed, floats, optimizer), None)),
        trainable=draw(_maybe(trainable, st.lists(st.sampled_from(names), unique=True).map(tuple) if names else st.just(()),
                              None)),
        extra=draw(_maybe(extra, st.dictionaries(st.sampled_from(("some-format", "other-format")),
                                                 trees(tensors(st.sampled_from(allowed))), min_size=1, max_size=2), {})),
    )
    if adapter_map and draw(_maybe(adapters_alone, st.just(True), False)):
        absent = {name: Tensor.absent(stored[name].dtype, specs[name]) for name in stored if name in adapter_map}
        ck = ck.evolve(tensors=absent, ties={}, train_state=None, trainable=None)
    ck.validate()
    return ck


def _maybe(flag: bool | None, strategy: st.SearchStrategy, absent) -> st.SearchStrategy:
    """``strategy`` always (True), never (False: ``absent``) or sometimes (None)."""
    if flag is None:
        return st.just(absent) | strategy
    return strategy if flag else st.just(absent)


def _schema(family: str | FamilySchema | None) -> FamilySchema | None:
    if family is None or family == "generic" or isinstance(family, FamilySchema):
        return family if isinstance(family, FamilySchema) else None
    from ..plugins import registry

    families = registry().families
    if family not in families:
        raise InvalidArgument(f"no installed family {family!r}; installed: {', '.join(sorted(families))}")
    return families[family]


def _generic(draw, ties: bool | None, need_2d: bool):
    """Arbitrary names and shapes; some names become ties to stored ones."""
    names = draw(st.lists(tensor_names, unique=True, min_size=2 if ties else 1 if need_2d else 0, max_size=8))
    n_ties = 0 if ties is False or len(names) < 2 else draw(st.integers(1 if ties else 0, len(names) - 1))
    stored, aliases = names[:len(names) - n_ties], names[len(names) - n_ties:]
    specs = {name: draw(shapes) for name in stored}
    if need_2d and not any(len(s) == 2 for s in specs.values()):
        specs[stored[0]] = draw(st.tuples(st.integers(0, 4), st.integers(0, 4)))
    tie_map = {alias: draw(st.sampled_from(stored)) for alias in aliases}
    params = draw(st.dictionaries(_segment, st.integers(0, 2**31) | st.text(max_size=6), max_size=3))
    return Arch("generic", params), specs, tie_map


def _family(draw, schema: FamilySchema, ties: bool | None):
    """Tensors of ``schema``'s rules at drawn hyper-parameters.

    Tie candidates: a top-level rule with the same shape as an earlier top-level rule (an
    output head tied to the embedding, as ``lm_head.weight`` -> ``transformer.wte.weight``).
    """
    params = {"n_layer": draw(st.integers(1, 3))}
    for name in sorted(_param_names(schema) - {"n_layer"}):
        params[name] = draw(st.integers(1, 8))
    specs: dict[str, tuple[int, ...]] = {}
    tie_map: dict[str, str] = {}
    pending: list[tuple[TensorRule, tuple[int, ...]]] = []  # per-layer rules, written layer by layer

    def flush():
        for i in range(params["n_layer"]):
            specs.update((_concrete(rule.pattern).replace("{i}", str(i)), shape) for rule, shape in pending)
        pending.clear()

    top: dict[tuple, str] = {}  # shape expression of a top-level tensor -> its name
    for rule in schema.tensors:
        shape = expected_shape(rule.shape, params)
        if shape is not None and any(d < 0 for d in shape):
            reject()  # an expression such as "d_model-n_head" went negative
        if shape is None:
            if not rule.required:
                continue
            shape = draw(shapes)
        elif not rule.required and not draw(st.booleans()):
            continue
        if "{i}" in rule.pattern:
            pending.append((rule, shape))
            continue
        flush()
        target = top.get(rule.shape) if rule.shape is not None else None
        if target is not None and ties is not False and (ties or draw(st.booleans())):
            tie_map[_concrete(rule.pattern)] = target
            continue
        specs[_concrete(rule.pattern)] = shape
        if rule.shape is not None:
            top.setdefault(rule.shape, _concrete(rule.pattern))
    flush()
    return Arch(schema.name, params), specs, tie_map


def _concrete(pattern: str) -> str:
    """A rule's pattern with its non-layer indexes (``{j}``, ``{k}``) set to 0."""
    for index in OTHER_INDEXES:
        pattern = pattern.replace(index, "0")
    return pattern


def _param_names(schema: FamilySchema) -> set[str]:
    """Hyper-parameters a schema's shapes, derivations and requirements name."""
    names = {"n_layer", *schema.required_params, *schema.derive}
    for rule in schema.tensors:
        for dim in rule.shape or ():
            if isinstance(dim, str):
                names.update(n.id for n in ast.walk(ast.parse(dim, mode="eval")) if isinstance(n, ast.Name))
    return names


@st.composite
def _train_states(draw, stored: list[str], specs: dict[str, tuple[int, ...]], allowed: list[str],
                  floats: list[str], optimizer: bool | None) -> TrainState:
    """A TrainState: 0-d tensor or float best metric, optimizer state keyed by ``stored``
    names, a config tree, RNG bytes."""
    any_tensor = tensors(dtypes(allowed))
    best = (st.floats() | tensors(st.sampled_from(floats), ())) if floats else st.floats()
    return TrainState(
        step=draw(st.integers(0, 10**6)),
        epoch=draw(st.none() | st.integers(0, 100)),
        best_metric=draw(st.none() | best),
        metrics=draw(st.dictionaries(st.text(max_size=6), st.floats(), max_size=3)),
        optimizer=draw(_maybe(optimizer, _optimizers(stored, specs, allowed), None)),
        scheduler=draw(st.none() | trees()),
        rng=draw(st.binary(max_size=16)),
        data_position=draw(st.none() | st.integers(0, 10**9)),
        config=draw(st.dictionaries(st.text(max_size=6), trees(), max_size=4)),
        extra=draw(st.dictionaries(st.text(max_size=6), trees(any_tensor), max_size=2)),
    )


@st.composite
def _optimizers(draw, stored: list[str], specs: dict[str, tuple[int, ...]], allowed: list[str]) -> OptimizerState:
    """Optimizer state for some of ``stored``: an ``exp_avg`` of each one's shape and a step."""
    names = draw(st.lists(st.sampled_from(stored), unique=True)) if stored else []
    param_state = {n: {"exp_avg": draw(tensors(dtypes(allowed), specs[n])), "step": draw(st.integers(0, 10**6))}
                   for n in names}
    groups = [{"lr": draw(st.floats(0, 1)), "params": names}] if names else []
    return OptimizerState(kind=draw(st.sampled_from(("adamw", "sgd", "muon"))), param_state=param_state,
                          groups=groups, resumable=draw(st.booleans()))
