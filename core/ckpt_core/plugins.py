"""Finding and loading plugins: the built-in formats, then entry points of group ``ckpt_core``.

A plugin that fails to import, or declares a format another plugin already has, is
recorded with its error (``ckpt-core plugins`` shows it) and skipped; the others work.
``CKPT_CORE_PLUGINS`` limits which entry points load, for hermetic tests: a comma-separated
list of entry-point names; empty means built-ins only; unset means all.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os

import attrs
import pluggy

from . import gpt, hookspecs
from .errors import UnknownFormat
from .formats import canonical, safetensors
from .model import FormatSpec
from .schema import FamilySchema

ENV_VAR = "CKPT_CORE_PLUGINS"
BUILTINS = {"canonical": canonical, "safetensors": safetensors, "gpt": gpt}


@attrs.frozen
class PluginInfo:
    """One plugin as loaded (or not): what ``ckpt-core plugins`` lists."""

    name: str
    distribution: str
    version: str
    formats: tuple[str, ...] = ()
    families: tuple[str, ...] = ()
    error: str = ""


@attrs.define
class Registry:
    """Loaded plugins, and the formats and families they declare."""

    pm: pluggy.PluginManager
    plugins: list[PluginInfo]
    formats: dict[str, FormatSpec]
    families: dict[str, FamilySchema]

    def spec(self, name: str) -> FormatSpec:
        """The FormatSpec called ``name``, or UnknownFormat listing what is installed."""
        try:
            return self.formats[name]
        except KeyError:
            raise UnknownFormat(f"no installed format {name!r}; installed: {', '.join(sorted(self.formats))}") from None

    @property
    def hook(self):
        return self.pm.hook


def _selected() -> set[str] | None:
    value = os.environ.get(ENV_VAR)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def build_registry() -> Registry:
    """Load the built-ins and every selected entry point, recording failures."""
    pm = pluggy.PluginManager("ckpt_core")
    pm.add_hookspecs(hookspecs)
    version = core_version()
    plugins: list[PluginInfo] = []
    formats: dict[str, FormatSpec] = {}
    families: dict[str, FamilySchema] = {}

    candidates = [(name, module, "ckpt-core", version) for name, module in BUILTINS.items()]
    entry_points = importlib.metadata.entry_points(group="ckpt_core")
    wanted = _selected()
    for ep in sorted(entry_points, key=lambda e: e.name):
        if wanted is not None and ep.name not in wanted:
            continue
        dist = ep.dist.name if ep.dist else "?"
        dist_version = ep.dist.version if ep.dist else "?"
        try:
            module = ep.load()
        except Exception as e:  # a broken plugin must never break the others
            plugins.append(PluginInfo(ep.name, dist, dist_version, error=f"import failed: {type(e).__name__}: {e}"))
            continue
        candidates.append((ep.name, module, dist, dist_version))

    for name, module, dist, dist_version in candidates:
        try:
            pm.register(module, name=name)
            specs = list(getattr(module, "ckpt_formats", lambda: [])() or [])
            schemas = list(getattr(module, "ckpt_families", lambda: [])() or [])
            clash = [s.name for s in specs if s.name in formats] + [s.name for s in schemas if s.name in families]
            if clash:
                raise ValueError(f"declares {clash[0]!r}, which another plugin already has")
        except Exception as e:
            if pm.is_registered(module):
                pm.unregister(module)
            plugins.append(PluginInfo(name, dist, dist_version, error=f"{type(e).__name__}: {e}"))
            continue
        formats.update((s.name, s) for s in specs)
        families.update((s.name, s) for s in schemas)
        plugins.append(PluginInfo(name, dist, dist_version, tuple(s.name for s in specs), tuple(s.name for s in schemas)))
    return Registry(pm, plugins, formats, families)


@functools.cache
def core_version() -> str:
    """The installed ckpt-core's version ("dev" when run from a source tree)."""
    try:
        return importlib.metadata.version("ckpt-core")
    except importlib.metadata.PackageNotFoundError:
        return "dev"


@functools.cache
def registry() -> Registry:
    """The process-wide registry, built on first use."""
    return build_registry()


def reset() -> None:
    """Forget the loaded plugins (tests that change ``CKPT_CORE_PLUGINS`` call this)."""
    registry.cache_clear()
