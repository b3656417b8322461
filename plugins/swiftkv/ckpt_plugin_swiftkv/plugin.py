"""The ckpt-core hook implementations of ckpt-plugin-swiftkv (placeholder until the plugin is written)."""

from ckpt_core import hookimpl


@hookimpl
def ckpt_formats():
    return []
