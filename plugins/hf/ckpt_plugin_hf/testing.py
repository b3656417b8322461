"""Hypothesis strategies for the ``hf`` format (tests only: needs hypothesis).

``checkpoints`` draws plain checkpoints of this plugin's families as transformers has them
(the decoder families without other distributions' additions, GPT-2 as the core's ``gpt``),
hyper-parameters in config.json's order. Used by this plugin's conformance test, the
every-pair test and the strategies of formats built on HF directories (SwiftKV students).
"""

from __future__ import annotations

from hypothesis import strategies as st

from ckpt_core.model import Arch
from ckpt_core.testing import checkpoints_for

from .config import ordered, tie_of
from .families import DECODERS, own_schema
from .plugin import SPEC


def checkpoints(spec=SPEC, family: str | None = None) -> st.SearchStrategy:
    """Plain checkpoints of ``family`` (or any of the format's families), tied only as
    config.json can say (the head to the embedding)."""
    families = [family] if family else ["gpt", *DECODERS]
    drawn = st.one_of([checkpoints_for(spec, own_schema(f), kv_sharing=False, trainable=False) for f in families])
    return drawn.filter(lambda ck: not ck.ties or ck.ties == tie_of(ck.arch.family)).map(
        lambda ck: ck.evolve(arch=Arch(ck.arch.family, ordered(ck.arch.params, ck.arch.family))))
