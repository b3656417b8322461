"""The canonical model: one checkpoint, whatever format it came from.

A Checkpoint is a graph of lazy tensors under canonical names (the family schema's), plus
its edges (ties, KV sharing, adapters), its training state, and what is needed to write it
back exactly as it came (``layout``, ``extra``). Formats translate to and from this and
nothing else, so any format converts to any other that can hold what it has.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from .dtypes import STANDARD_DTYPES
from .errors import CorruptInput
from .tensor import Tensor

SCALINGS = ("alpha/rank", "alpha/sqrt(rank)", "alpha")


@attrs.frozen
class Arch:
    """Model family (a schema name, or "generic") and its hyper-parameters under canonical
    keys: ``vocab_size``, ``n_layer``, ``n_head``, ``n_kv_head``, ``d_model``, ``d_ff``, ..."""

    family: str = "generic"
    params: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(eq=False)
class Adapter:
    """A LoRA adapter on a base tensor W [out, in]: ``W + scale * (b @ a)``.

    ``a`` is [rank, in] and ``b`` is [out, rank] whatever the format stores (formats
    transpose lazily, which is exact). ``scaling`` says how ``alpha`` gives the scale, as the
    format states it: ``alpha/rank`` (peft, the nanoGPT fork), ``alpha/sqrt(rank)`` (rsLoRA)
    or ``alpha`` (moshi's ``scaling``, mlx-lm's ``scale``). ``kind`` is ``linear`` or
    ``embedding`` (the delta changes the lookup table only, never a tied output head).
    """

    a: Tensor
    b: Tensor
    alpha: float
    scaling: str = attrs.field(default="alpha/rank", validator=attrs.validators.in_(SCALINGS))
    kind: str = attrs.field(default="linear", validator=attrs.validators.in_(("linear", "embedding")))

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def scale(self) -> float:
        if self.scaling == "alpha":
            return float(self.alpha)
        if self.rank == 0:
            return 0.0
        if self.scaling == "alpha/rank":
            return self.alpha / self.rank
        return self.alpha / math.sqrt(self.rank)


@attrs.frozen(eq=False)
class OptimizerState:
    """Optimizer state keyed by canonical parameter names, never by position.

    ``param_state`` maps a parameter name to its slots (``{"exp_avg": Tensor, "step": ...}``);
    ``groups`` are the param groups' hyper-parameters, each with ``"params"``: the names in
    the order the optimizer had them. ``resumable`` is False when the state cannot resume
    training as it is (for example one rank's shard of a sharded optimizer).
    """

    kind: str = ""
    param_state: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    groups: list[dict[str, Any]] = attrs.field(factory=list)
    resumable: bool = True
    extra: dict[str, Any] = attrs.field(factory=dict)


@attrs.frozen(eq=False)
class TrainState:
    """Where training was: everything needed to resume, read without loading weights.

    Values may be plain data, tuples, bytes or Tensors (``best_metric`` is a 0-d tensor in
    nanoGPT files); all of it is kept exactly.
    """

    step: int | None = None
    epoch: int | None = None
    best_metric: Any = None
    metrics: dict[str, Any] = attrs.field(factory=dict)
    optimizer: OptimizerState | None = None
    scheduler: Any = None
    rng: Any = None
    data_position: Any = None
    config: dict[str, Any] = attrs.field(factory=dict)
    extra: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (the optimizer as a dict too); values untouched."""
        data = attrs.asdict(self, recurse=False)
        if self.optimizer is not None:
            data["optimizer"] = attrs.asdict(self.optimizer, recurse=False)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        """The inverse of ``to_dict``."""
        data = dict(data)
        opt = data.pop("optimizer", None)
        return cls(**data, optimizer=OptimizerState(**opt) if opt is not None else None)


@attrs.frozen
class Layout:
    """Which format and variant a checkpoint came from, and the facts needed to write it
    back exactly (fused or not, key prefix, shard plan, file names).

    ``earlier``: the layouts of the formats it was in before this one, newest first, as far
    as the files it was read from recorded them (formats with room for metadata record
    ``trail``). A writer takes its own format's facts from ``of``, so A -> B -> A writes A's
    files as they were, without options."""

    format: str = ""
    variant: str = ""
    facts: dict[str, Any] = attrs.field(factory=dict)
    earlier: tuple[Layout, ...] = attrs.field(default=(), converter=tuple)

    def of(self, *formats: str) -> Layout | None:
        """The newest layout, this one or an earlier one, in one of ``formats`` (None: none is)."""
        return next((layout for layout in (self, *self.earlier) if layout.format in formats), None)

    def trail(self, format: str) -> tuple[Layout, ...]:
        """The layouts a file of ``format`` records, newest first: all of them, or where
        ``format`` is among them, only those older than its newest (its own files hold its
        facts; the newer ones were made from them), so that writing A again writes what A's
        files recorded."""
        chain = [attrs.evolve(layout, earlier=()) for layout in (self, *self.earlier) if layout.format]
        own = next((i for i, layout in enumerate(chain) if layout.format == format), None)
        return tuple(chain if own is None else chain[own + 1:])


@attrs.frozen(eq=False)
class Checkpoint:
    """A whole checkpoint in canonical form. Tensors are lazy; nothing here reads data.

    - ``tensors``: canonical name -> Tensor, in order. A tied name is not here but in ``ties``.
    - ``ties``: alias -> the stored name it shares storage with (``lm_head.weight`` -> ...).
    - ``kv_sharing``: consumer layer -> producer layer whose KV cache it reuses.
    - ``adapters``: base tensor name -> Adapter (never merged unless asked).
    - ``trainable``: the names training updates, when the format says (None: not stated).
    - ``extra``: format-specific fields that must survive, ``{format name: tree}``.
    """

    arch: Arch = attrs.field(factory=Arch)
    tensors: dict[str, Tensor] = attrs.field(factory=dict)
    ties: dict[str, str] = attrs.field(factory=dict)
    kv_sharing: dict[int, int] = attrs.field(factory=dict)
    adapters: dict[str, Adapter] = attrs.field(factory=dict)
    train_state: TrainState | None = None
    trainable: tuple[str, ...] | None = None
    layout: Layout = attrs.field(factory=Layout)
    extra: dict[str, Any] = attrs.field(factory=dict)

    def evolve(self, **changes) -> Checkpoint:
        return attrs.evolve(self, **changes)

    def names(self) -> list[str]:
        """Every tensor name a full state dict would have: stored ones and tied aliases."""
        return [*self.tensors, *self.ties]

    def tensor(self, name: str) -> Tensor:
        """The tensor under ``name``, following a tie."""
        return self.tensors[self.ties.get(name, name)]

    @property
    def nbytes(self) -> int:
        """The bytes of data it holds (absent base tensors hold none)."""
        return sum(t.nbytes for t in self.tensors.values() if not t.is_absent) + sum(
            ad.a.nbytes + ad.b.nbytes for ad in self.adapters.values())

    def absent_names(self) -> list[str]:
        """The tensors known by dtype and shape only (``Tensor.absent``): the base weights
        of adapters that came without them."""
        return [name for name, t in self.tensors.items() if t.is_absent]

    def validate(self) -> None:
        """Raise CorruptInput if the graph's edges do not fit its tensors."""
        for field, value in (("arch.params", self.arch.params), ("tensors", self.tensors), ("ties", self.ties),
                             ("kv_sharing", self.kv_sharing), ("adapters", self.adapters), ("extra", self.extra)):
            if not isinstance(value, dict):
                raise CorruptInput(f"{field} must be a mapping, not {type(value).__name__}")
        for alias, target in self.ties.items():
            if alias in self.tensors:
                raise CorruptInput(f"tied name {alias!r} is also stored as a tensor")
            if target not in self.tensors:
                raise CorruptInput(f"tie {alias!r} -> {target!r}: no tensor {target!r}")
        for base, ad in self.adapters.items():
            if base not in self.tensors and base not in self.ties:
                raise CorruptInput(f"adapter on {base!r}: no such tensor")
            w = self.tensor(base)
            if len(ad.a.shape) != 2 or len(ad.b.shape) != 2 or ad.b.shape[1] != ad.a.shape[0]:
                raise CorruptInput(f"adapter on {base!r}: a {list(ad.a.shape)} and b {list(ad.b.shape)} do not chain")
            if (ad.b.shape[0], ad.a.shape[1]) != tuple(w.shape):
                raise CorruptInput(f"adapter on {base!r}: b @ a is {[ad.b.shape[0], ad.a.shape[1]]}, weight is {list(w.shape)}")
        for consumer, producer in self.kv_sharing.items():
            if not (isinstance(consumer, int) and isinstance(producer, int)):
                raise CorruptInput(f"kv_sharing must map layer numbers to layer numbers, got {consumer!r}: {producer!r}")
        if self.trainable is not None:
            unknown = [n for n in self.trainable if n not in self.tensors and n not in self.ties]
            if unknown:
                raise CorruptInput(f"trainable names no tensor: {unknown[:3]}")


@attrs.frozen
class Detection:
    """A format's claim on a path: ``confidence`` 0..1 and a one-line ``reason``."""

    format: str
    confidence: float
    reason: str
    path: Path | None = None


# Capabilities a FormatSpec can declare. The core refuses a conversion that would drop one
# of these things into a format that does not declare it.
# ``adapters_alone``: it can write adapters whose base tensors are absent (adapter files).
# ``quantized``: it holds packed quantized weights as they are (see ``QUANTIZATION``).
CAPABILITIES = ("ties", "kv_sharing", "adapters", "adapters_alone", "train_state", "optimizer_state", "trainable",
                "extra", "quantized")

# The hyper-parameter of a checkpoint whose weights are packed by quantization (mlx's
# affine: ``{"group_size", "bits", "mode"}`` and per-module overrides): its packed weights,
# scales and biases are tensors as they are stored, which only a format declaring
# ``quantized`` holds; the reader that packs them unpacks them on request (``DEQUANTIZE``).
QUANTIZATION = "quantization"
DEQUANTIZE = "--option dequantize=true"


@attrs.frozen
class FormatSpec:
    """What a format is and can hold. A plugin returns these from ``ckpt_formats``.

    - ``families``: family names the format can hold; ``("*",)`` means any.
    - ``capabilities``: a subset of CAPABILITIES; a checkpoint that has one of these and is
      converted to a format without it is refused before anything is written.
    - ``dtypes``: the dtypes the format can store (default: all but C64, complex64).
    - ``patterns``: file or directory names it reads (for docs and ``plugins``).
    - ``options``: option name -> one-line help; ``convert --option`` refuses any other.
    - ``run_dirs``: True when the format lists checkpoints in a run directory.
    - ``extra_of``: other formats whose ``extra`` fields this one keeps as well as its own
      (formats of one plugin that carry the same files, such as a teacher's tokenizer).
    - ``writes_any``: False when the writer needs what only a real run of the format has
      (DeepSpeed: Adam moments for every trainable parameter), so it refuses most drawn
      checkpoints: the generic round-trip properties (every pair, the conformance
      suite's Hypothesis test) skip it, and the plugin's own tests prove its writes.
    - ``write_options``: option sets with which such a writer takes any checkpoint it holds,
      each a layout of its own (DeepSpeed: a fresh optimizer state, at ZeRO-3 and in the
      universal layout); the crash suite writes each.
    """

    name: str
    description: str
    families: tuple[str, ...] = ("*",)
    capabilities: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    dtypes: frozenset[str] = attrs.field(default=STANDARD_DTYPES, converter=frozenset)
    patterns: tuple[str, ...] = ()
    options: dict[str, str] = attrs.field(factory=dict)
    run_dirs: bool = False
    extra_of: frozenset[str] = attrs.field(default=frozenset(), converter=frozenset)
    writes_any: bool = True
    write_options: tuple[dict[str, Any], ...] = ()

    def holds_family(self, family: str) -> bool:
        return "*" in self.families or family in self.families


@attrs.frozen
class RunEntry:
    """One checkpoint in a run directory, as a format's ``list_checkpoints`` finds it.

    ``paths`` are everything that belongs to it (deleted together by prune). An incomplete
    entry (interrupted save, missing state file, truncated weights) says why in ``note``
    and is never chosen as latest. ``tags`` marks special ones, such as ``"best"``.
    """

    path: Path
    step: int | None
    complete: bool
    paths: tuple[Path, ...] = ()
    tags: frozenset[str] = frozenset()
    note: str = ""
