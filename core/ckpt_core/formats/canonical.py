"""The ``canonical`` format: ckpt-core's own directory, which holds any checkpoint exactly.

    out/
      manifest.json               format version, arch, tensors (file, key, dtype, shape,
                                  checksum; or ``absent``: a base weight known by dtype
                                  and shape only), ties, kv_sharing, adapters, trainable,
                                  train_state, layout, extra
      model.safetensors           the tensors and adapter matrices (or model-0000k-of-0000n)
      state.safetensors           tensors inside train state, arch, layout and extra

It is the reference every plugin round-trips through: nothing is dropped, every tensor is
stored once with its checksum, and the manifest is plain JSON a person can read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .. import files, jsonfile, safetensors_io, tree
from ..dtypes import ALL_DTYPES
from ..errors import CkptError, CorruptInput
from ..hookspecs import hookimpl
from ..model import CAPABILITIES, Adapter, Arch, Checkpoint, Detection, FormatSpec, Layout, TrainState
from ..tensor import Tensor

NAME = "canonical"
MAGIC = "ckpt-core-canonical"
VERSION = 1
MANIFEST = "manifest.json"
STATE_FILE = "state.safetensors"
ADAPTER_KEYS = ("::lora_a", "::lora_b")

SPEC = FormatSpec(
    name=NAME,
    description="ckpt-core's lossless directory: safetensors shards + manifest.json",
    capabilities=frozenset(CAPABILITIES),
    dtypes=ALL_DTYPES,
    patterns=(MANIFEST, "model*.safetensors", STATE_FILE),
    options={
        "max_shard_size": "largest shard when writing, as 5GB (decimal) or 4GiB; default 5GB",
        "verify": "true: check every tensor's checksum while reading (reads all data)",
    },
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    manifest = path / MANIFEST
    if not manifest.is_file():
        return None
    try:
        head = json.loads(files.read_text(manifest, jsonfile.MAX_BYTES))
    except (CkptError, ValueError, UnicodeDecodeError, OSError, RecursionError):
        return Detection(NAME, 0.3, f"{MANIFEST} is not valid JSON", path)
    if isinstance(head, dict) and head.get("format") == MAGIC:
        return Detection(NAME, 1.0, f"{MANIFEST} says {MAGIC} version {head.get('version')}", path)
    return None


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any]):
    if format != NAME:
        return None
    return read(path, verify=bool(options.get("verify", False)))


@hookimpl
def from_canonical(checkpoint: Checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != NAME:
        return None
    write(checkpoint, path, max_shard_size=options.get("max_shard_size", "5GB"))
    return True


# -- writing -----------------------------------------------------------------------------


def write(ck: Checkpoint, path: Path, max_shard_size: int | str = "5GB") -> None:
    """Write ``ck`` as a canonical directory at ``path`` (which must not exist)."""
    path.mkdir()
    stored: dict[str, Tensor] = {name: t for name, t in ck.tensors.items() if not t.is_absent}
    adapters = {}
    for base, ad in ck.adapters.items():
        keys = [base + suffix for suffix in ADAPTER_KEYS]
        if any(k in stored for k in keys):
            raise CorruptInput(f"tensor names clash with the adapter keys of {base!r}")
        stored.update(zip(keys, (ad.a, ad.b)))
        adapters[base] = {"a": keys[0], "b": keys[1], "alpha": ad.alpha, "scaling": ad.scaling, "kind": ad.kind}
    weight_map, sums = safetensors_io.write_sharded(path, stored, max_shard_size, checksums=True, index=False)

    state_tree, state_tensors = tree.encode({
        "arch_params": ck.arch.params,
        "train_state": ck.train_state.to_dict() if ck.train_state is not None else None,
        "layout_facts": ck.layout.facts,
        "earlier_layouts": [{"format": e.format, "variant": e.variant, "facts": e.facts} for e in ck.layout.earlier],
        "extra": ck.extra,
    })
    if state_tensors:
        sums.update(safetensors_io.write_file(path / STATE_FILE, state_tensors, checksums=True))

    def entry(key: str, t: Tensor, file: str) -> dict:
        if t.is_absent:
            return {"absent": True, "dtype": t.dtype, "shape": list(t.shape)}
        return {"file": file, "key": key, "dtype": t.dtype, "shape": list(t.shape), "checksum": sums[key]}

    manifest = {
        "format": MAGIC,
        "version": VERSION,
        "arch": {"family": ck.arch.family, "params": state_tree["arch_params"]},
        "tensors": {k: entry(k, t, weight_map.get(k, "")) for k, t in {**ck.tensors, **stored}.items()},
        "state_tensors": {k: entry(k, t, STATE_FILE) for k, t in state_tensors.items()},
        "ties": ck.ties,
        "kv_sharing": {str(k): v for k, v in ck.kv_sharing.items()},
        "adapters": adapters,
        "trainable": list(ck.trainable) if ck.trainable is not None else None,
        "train_state": state_tree["train_state"],
        "layout": {"format": ck.layout.format, "variant": ck.layout.variant, "facts": state_tree["layout_facts"],
                   **({"earlier": state_tree["earlier_layouts"]} if ck.layout.earlier else {})},
        "extra": state_tree["extra"],
    }
    safetensors_io.write_bytes(path / MANIFEST, _manifest_text(manifest).encode())


def _manifest_text(manifest: dict) -> str:
    """Indented JSON, except that each tensor entry stays on one line (a readable table)."""
    parts = []
    for key, value in manifest.items():
        if key in ("tensors", "state_tensors") and value:
            rows = ",\n".join(f"    {json.dumps(n)}: {json.dumps(e)}" for n, e in value.items())
            text = "{\n" + rows + "\n  }"
        else:
            text = json.dumps(value, indent=2).replace("\n", "\n  ")
        parts.append(f"  {json.dumps(key)}: {text}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


# -- reading -----------------------------------------------------------------------------


def _manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    m = jsonfile.read_object(manifest_path)
    if m.get("format") != MAGIC:
        raise CorruptInput(f"{manifest_path}: not a {MAGIC} manifest")
    if m.get("version") != VERSION:
        raise CorruptInput(f"{manifest_path}: manifest version {m.get('version')!r}; this ckpt-core reads version {VERSION} (upgrade ckpt-core)")
    return m


def _malformed(path: Path, e: Exception) -> CorruptInput:
    return CorruptInput(f"{path / MANIFEST}: malformed manifest ({type(e).__name__}: {e})")


def read(path: Path, verify: bool = False) -> Checkpoint:
    """The checkpoint in canonical directory ``path``; lazy unless ``verify``."""
    m = _manifest(path)
    try:
        stored = _open_entries(path, m["tensors"], verify)
        state_tensors = _open_entries(path, m.get("state_tensors", {}), verify)
        adapters = {
            base: Adapter(stored.pop(a["a"]), stored.pop(a["b"]), a["alpha"], a["scaling"], a["kind"])
            for base, a in m["adapters"].items()
        }
        ck = Checkpoint(
            arch=Arch(m["arch"]["family"], tree.decode(m["arch"]["params"], state_tensors)),
            tensors=stored,
            ties=dict(m["ties"]),
            kv_sharing={int(k): v for k, v in m["kv_sharing"].items()},
            adapters=adapters,
            train_state=_train_state(m, state_tensors),
            trainable=tuple(m["trainable"]) if m["trainable"] is not None else None,
            layout=_layout(m["layout"], state_tensors),
            extra=tree.decode(m["extra"], state_tensors),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _malformed(path, e) from None
    ck.validate()
    return ck


def _layout(entry: dict, state_tensors: dict[str, Tensor]) -> Layout:
    """The manifest's layout: the source's format, variant and facts, and its earlier layouts."""
    earlier = [_layout(e, state_tensors) for e in entry.get("earlier", [])]
    return Layout(entry["format"], entry["variant"], tree.decode(entry["facts"], state_tensors), earlier)


@hookimpl
def train_state(path: Path, format: str):
    if format != NAME:
        return None
    m = _manifest(path)
    try:
        return _train_state(m, _open_entries(path, m.get("state_tensors", {}), verify=False))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _malformed(path, e) from None


def _train_state(m: dict, state_tensors: dict[str, Tensor]) -> TrainState | None:
    data = tree.decode(m["train_state"], state_tensors)
    return TrainState.from_dict(data) if data is not None else None


def _open_entries(path: Path, entries: dict, verify: bool) -> dict[str, Tensor]:
    manifest_path = path / MANIFEST
    files: dict[str, dict[str, Tensor]] = {}
    out: dict[str, Tensor] = {}
    for name, e in entries.items():
        if e.get("absent") is True:
            out[name] = Tensor.absent(e["dtype"], e["shape"])
            continue
        file = e["file"]
        if file not in files:
            files[file] = safetensors_io.open_file(safetensors_io.plain_file(path, file, manifest_path))[0]
        t = files[file].get(e["key"])
        if t is None:
            raise CorruptInput(f"{path / file}: no tensor {e['key']!r}, which {MANIFEST} lists")
        if t.dtype != e["dtype"] or list(t.shape) != e["shape"]:
            raise CorruptInput(f"{path / file}: tensor {e['key']!r} is {t.dtype} {list(t.shape)}, {MANIFEST} says {e['dtype']} {e['shape']}")
        if verify and safetensors_io.crc32_of(t) != e["checksum"]:
            raise CorruptInput(f"{path / file}: tensor {e['key']!r} fails its checksum (data corrupted)")
        out[name] = t
    return out
