"""config.json of a SwiftKV student: its teacher's fields (ckpt-plugin-hf derives them)
with the student's ``model_type``, architecture and plan (``swiftkv.Plan.config``) over
them; and the teacher's fields again when a student is read as its teacher."""

from __future__ import annotations

from typing import Any

import ckpt_plugin_hf as hf
from ckpt_core import Checkpoint

from . import swiftkv
from .families import STUDENTS


def ordered(params: dict[str, Any], family: str) -> dict[str, Any]:
    """Hyper-parameters in one order: config.json's, then SwiftKV's, then the rest by name."""
    return hf.ordered(params, family, swiftkv.A_PARAMS)


def derived(ck: Checkpoint, plan: swiftkv.Plan) -> dict[str, Any]:
    """The config.json fields that follow from student ``ck`` of this ``plan``."""
    out = hf.derived(ck, consumed=swiftkv.A_PARAMS)
    model_type, architecture = STUDENTS[ck.arch.family]
    return {**out, "model_type": model_type, "architectures": [architecture], **plan.config()}


def teacher_config(config: dict) -> dict:
    """A student's config.json without what only a student has: its SwiftKV fields, model
    type and architecture (so the teacher's are derived again)."""
    return {k: v for k, v in config.items() if k not in swiftkv.CONFIG_FIELDS
            and not (k in ("model_type", "architectures") and "swiftkv" in str(v).lower())}
