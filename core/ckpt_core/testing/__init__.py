"""The ckpt-core testing kit: Hypothesis strategies and a conformance suite for formats.

    from ckpt_core.testing import FormatConformance, checkpoints_for

Names are imported on first use: pytest loads ``ckpt_core.testing.pytest_plugin`` (and so
this package) in every run, which must work without hypothesis installed.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "FormatConformance": "conformance",
    "SETTINGS": "conformance",
    "checkpoints": "strategies",
    "checkpoints_for": "strategies",
    "dtypes": "strategies",
    "spec_families": "strategies",
    "tensors": "strategies",
    "trees": "strategies",
    "example_checkpoint": "pytest_plugin",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
