"""Hypothesis strategies for this plugin's format (tests only: needs hypothesis).

A schema alone cannot say which layers of a SwiftKV student carry SwiftKV tensors, so
``students`` draws a teacher (ckpt-plugin-hf's strategy) and a variant A or B plan and
initialises the student as training does. Used by this plugin's conformance tests and the
every-pair test.
"""

from __future__ import annotations

import warnings

from hypothesis import assume
from hypothesis import strategies as st

from ckpt_core.model import Arch
from ckpt_core.plugins import registry
from ckpt_plugin_hf.testing import checkpoints

from .config import ordered
from .swiftkv import AVERAGED, Plan, init_student


@st.composite
def students(draw, spec, family: str | None = None):
    """A student as ``init_student`` makes it from a drawn teacher, variant A or B."""
    ck = draw(checkpoints(registry().spec("hf"), family or draw(st.sampled_from(spec.families))))
    n_layer = ck.arch.params["n_layer"]
    assume(n_layer >= 2)
    if draw(st.booleans()):
        nkv = draw(st.integers(1, n_layer - 1))
        averagable = all(t.dtype in AVERAGED for n, t in ck.tensors.items() if "_proj." in n or "k_norm" in n)
        sizes = [g for g in range(1, n_layer - nkv + 1) if (n_layer - nkv) % g == 0 and (g == 1 or averagable)]
        plan = Plan("A", n_layer, nkv, draw(st.sampled_from(sizes)))
    else:
        consumers = draw(st.lists(st.integers(1, n_layer - 1), min_size=1, unique=True))
        plan = Plan("B", n_layer, kv_map={c: draw(st.integers(0, c - 1)) for c in consumers},
                    mlp=draw(st.booleans()), layernorm=draw(st.booleans()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        student = init_student(ck, plan)
    return student.evolve(arch=Arch(student.arch.family, ordered(student.arch.params, student.arch.family)))
