"""What ``test_pairs.py`` needs to know about each installed format, in one place.

- ``triples()``: every ordered pair (A, B) of installed formats, A != B, with every family
  both hold, computed from the registry: a new plugin adds rows with no edit. A format
  whose writer needs what only a real run has (``FormatSpec.writes_any`` False: DeepSpeed)
  has no rows: its own tests prove its conversions against the upstream engine.
- ``KEEPS_LAYOUTS``: the formats whose files record the source's layout;
  ``SOURCE_LAYOUTS``: non-default layouts sources are written with, so that it shows.
- ``destination(format)``: a path name each format's writer accepts (a directory name for
  any format not in the table).
- ``source_checkpoints(format, family)``: canonical checkpoints format A can hold as they
  are. ``checkpoints_for(spec, family)`` for any format not in the table; the table narrows
  it for writers that need structure a FormatSpec cannot state (fused q/k/v of one dtype,
  a SwiftKV student's plan, moshi's one LoRA rank, peft's base as an hf directory), as each plugin's own conformance test
  does. ``NOT_A_SOURCE`` lists (format, family) pairs a format accepts only by converting
  the family (nanoGPT <-> modded-nanogpt crossings): such a format never reads back as that
  family, so it cannot be the source of it.
"""

from __future__ import annotations

from hypothesis import strategies as st

from ckpt_core.model import Adapter, Checkpoint, Layout, OptimizerState, TrainState
from ckpt_core.plugins import registry
from ckpt_core.testing import checkpoints_for, spec_families

# A destination name each format's writer accepts; any other format gets DEFAULT_DESTINATION.
DESTINATIONS = {
    "canonical": "ckpt",
    "safetensors": "model.safetensors",
    "nanogpt": "ckpt.pt",
    "lora-nanogpt": "ckpt.pt",
    "modded-nanogpt": "state_step000001.pt",
    "modded-nanogpt-medium": "state_step000001.pt",
    "mlx": "run",
    "peft": "adapter",
    "hf": "model",
    "swiftkv": "student",
    "moshi": "run",
}
DEFAULT_DESTINATION = "out"

# Formats whose files have room for metadata and record the layouts a checkpoint was in
# before (``Layout.trail``): A -> B -> A through one of them gives A's layout back.
KEEPS_LAYOUTS = {"canonical", "safetensors", "mlx", "peft", "hf", "swiftkv", "moshi"}
# What a source is written with, where its writer's defaults would make the layout check
# trivial: facts only a recorded layout brings back (a prefix, metadata of the user's own).
SOURCE_LAYOUTS = {
    "nanogpt": Layout("nanogpt", "nanogpt", {"prefix": "_orig_mod."}),
    "modded-nanogpt": Layout("modded-nanogpt", "qkv", {"prefix": ""}),
    "safetensors": Layout("safetensors", "file", {"metadata": {"source": "pairs"}}),
    "mlx": Layout("mlx", "run", {"metadata": {"source": "pairs"}}),
}

_CROSSING = ("{format} writes a {family} checkpoint as the other family (a crossing refused without "
             "--option fill_missing / drop_unmapped), so it never reads back as {family}")
NOT_A_SOURCE = {
    ("nanogpt", "modded-gpt"): _CROSSING,
    ("modded-nanogpt", "gpt"): _CROSSING,
    ("modded-nanogpt-medium", "gpt"): _CROSSING,
}


def destination(format: str) -> str:
    return DESTINATIONS.get(format, DEFAULT_DESTINATION)


def paired_formats() -> dict:
    """The installed formats whose writers take any checkpoint they can hold (not those
    with ``FormatSpec.writes_any`` False, which their own tests prove)."""
    return {name: spec for name, spec in registry().formats.items() if spec.writes_any}


def triples() -> list[tuple[str, str, str]]:
    """(A, B, family) for every ordered pair of paired formats and family both hold."""
    formats = paired_formats()
    held = {name: spec_families(spec) for name, spec in formats.items()}
    return [(a, b, family) for a in sorted(formats) for b in sorted(formats) if a != b
            for family in held[a] if family in held[b]]


def not_a_source(format: str, family: str) -> str | None:
    """Why ``format`` cannot be the source of ``family`` checkpoints (None: it can)."""
    reason = NOT_A_SOURCE.get((format, family))
    return reason.format(format=format, family=family) if reason else None


def source_checkpoints(format: str, family: str) -> st.SearchStrategy[Checkpoint]:
    spec = registry().spec(format)
    narrowed = _SOURCES.get(format)
    return narrowed(spec, family) if narrowed else checkpoints_for(spec, family)


# -- moshi ----------------------------------------------------------------------------------


@st.composite
def _moshi(draw, spec, family):
    """What a moshi checkpoint holds: tensors in sorted order (its files are), ties only
    from a TTT layer's ``ttt.original_layer.X`` to its ``X`` (drawn as stored tensors, they
    become ties or go), LoRA on linear ``.weight`` tensors with one rank and
    one scale, and a train state of a step and a resumable optimizer keyed by position (the
    files do not name parameters; a kind read back from its slots)."""
    from ckpt_plugin_moshi_ttt.keys import ALIAS

    ck = draw(checkpoints_for(spec, family, ties=False, train_state=False))
    tensors, ties = {}, {}
    for name, t in sorted(ck.tensors.items()):
        alias = ALIAS.match(name)
        if alias is None:
            tensors[name] = t
        elif alias.group(1) + alias.group(2) in ck.tensors:
            ties[name] = alias.group(1) + alias.group(2)
    adapters = {}
    for base, ad in ck.adapters.items():
        first = next(iter(adapters.values()), ad)
        if base in tensors and base.endswith(".weight") and ad.rank == first.rank:
            adapters[base] = Adapter(ad.a, ad.b, first.alpha, first.scaling, "linear")
    train_state = None
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(sorted(tensors)), unique=True)) if tensors else []
        slots = {str(i): {"exp_avg": tensors[n], "step": draw(st.integers(0, 10**6))} for i, n in enumerate(names)}
        groups = [{"lr": draw(st.floats(0, 1, allow_nan=False)), "params": list(slots)}] if slots else []
        optimizer = OptimizerState(kind="", param_state=slots, groups=groups) if draw(st.booleans()) else None
        train_state = TrainState(step=draw(st.integers(0, 10**6)), optimizer=optimizer)
    return ck.evolve(tensors=tensors, ties=ties, adapters=adapters, train_state=train_state)


def _plugin_strategy(module: str, name: str):
    """A strategy a plugin ships in its ``testing`` module, imported when first drawn."""
    def strategy(spec, family):
        import importlib

        return getattr(importlib.import_module(module), name)(spec, family)
    return strategy


def _peft(spec, family):
    """peft writes the base of a Llama / Qwen checkpoint as an ``hf`` directory
    (``base_model/``): what ``hf`` holds, with adapters; a ``generic`` one only as adapters
    alone, on ``<module>.weight`` names as peft's keys are."""
    if family in ("llama", "qwen2", "qwen3"):
        return _SOURCES["hf"](spec, family)
    if family == "generic":
        alone = checkpoints_for(spec, family, adapters=True, adapters_alone=True)
        return alone.map(lambda ck: ck.evolve(tensors={n + ".weight": t for n, t in ck.tensors.items()},
                                              adapters={n + ".weight": ad for n, ad in ck.adapters.items()}))
    return checkpoints_for(spec, family)


_SOURCES = {
    "modded-nanogpt": _plugin_strategy("ckpt_plugin_nanogpt.testing", "checkpoints"),
    "modded-nanogpt-medium": _plugin_strategy("ckpt_plugin_nanogpt.testing", "checkpoints"),
    "hf": _plugin_strategy("ckpt_plugin_hf.testing", "checkpoints"),
    "swiftkv": _plugin_strategy("ckpt_plugin_swiftkv.testing", "students"),
    "moshi": _moshi,
    "peft": _peft,
}
