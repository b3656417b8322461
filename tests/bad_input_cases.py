"""Inputs for ``test_bad_input.py``: a small valid example of every installed format, and
deterministic ways to damage them (seeded ``random.Random``, no Hypothesis).

Examples are written by ckpt-core's own writers from one real nanoGPT checkpoint
(``examples/tiny-nanogpt/ckpt.pt``: AdamW state, tied head) and one hand-made Llama
checkpoint, plus the files some formats read that ckpt-core does not write
(``pytorch_model.bin``, ``adapter_model.bin``, a DeepSpeed output directory). ``LISTED``
are the examples made by hand here; every other installed format (``new_formats``: a new
plugin's) gets one written by its own writer, so that it joins every suite built on these
examples (bad input, never losing data, crashes) with no edit to them.

A mutation is ``(kind, label, apply)``: ``apply(root)`` damages, in place, a copy of the
directory holding an example. Every mutation works on bytes, JSON or directory entries;
none imports torch. Hostile pickles (``payloads``, ``write_hostile``) are written with torch.
``time_limit`` is the hang guard every bad-input case runs under (here and in
``test_fuzz_headers.py``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import pickletools
import random
import re
import shutil
import signal
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs

from ckpt_core import Arch, Checkpoint, Tensor, TrainState, api, losses, torchfile
from ckpt_core.plugins import registry
from ckpt_core.schema import expected_shape

REPO = Path(__file__).resolve().parents[1]
NANOGPT_EXAMPLE = REPO / "examples" / "tiny-nanogpt" / "ckpt.pt"

Mutation = tuple[str, str, Callable[[Path], None]]

# The examples ``build_examples`` makes by hand (``format:variant`` for a format's other layouts).
LISTED = ["nanogpt", "modded-nanogpt", "modded-nanogpt-medium", "lora-nanogpt", "peft", "peft:bin", "canonical",
          "safetensors", "safetensors:index", "mlx", "hf", "hf:bin", "swiftkv", "swiftkv:deepspeed", "moshi", "dcp",
          "deepspeed"]


def new_formats() -> list[str]:
    """The installed formats ``LISTED`` does not cover, whose writers take any checkpoint
    they hold (``FormatSpec.writes_any``): each gets an example from its own writer."""
    covered = {name.split(":")[0] for name in LISTED}
    return sorted(name for name, spec in registry().formats.items() if spec.writes_any and name not in covered)


# -- valid examples ---------------------------------------------------------------------------


class Hung(BaseException):
    """What ``time_limit`` raises: a BaseException, so that no ``except Exception`` or
    ``except OSError`` (TimeoutError is one) in the code under test can swallow it."""


@contextlib.contextmanager
def time_limit(seconds: float, label: str = "the case"):
    """Fail the case (Hung) instead of hanging; SIGALRM, so main thread only."""
    def alarm(signum, frame):
        raise Hung(f"{label}: took more than {seconds} s (hung?)")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def llama_checkpoint() -> Checkpoint:
    """A two-layer Llama (GQA: 2 query heads, 1 KV head) with seeded random F32 weights."""
    rng = random.Random(7)
    schema = registry().families["llama"]
    params = {"n_layer": 2, "vocab_size": 16, "d_model": 8, "n_head": 2, "n_kv_head": 1, "head_dim": 4, "d_ff": 12}
    tensors = {}
    for rule in schema.tensors:
        if not rule.required:
            continue
        shape = expected_shape(rule.shape, params)
        layers = range(params["n_layer"]) if "{i}" in rule.pattern else [None]
        for i in layers:
            name = rule.pattern if i is None else rule.pattern.replace("{i}", str(i))
            tensors[name] = Tensor.from_bytes(rng.randbytes(math.prod(shape) * 4), "F32", shape)
    return Checkpoint(arch=Arch("llama", params), tensors=tensors)


def build_examples(root: Path) -> dict[str, Path]:
    """Write one small valid example per case name under ``root``; return name -> path.

    Names are format names, or ``format:variant`` where a format reads several layouts
    (one file or an index of shards, safetensors or pickle weights, a DeepSpeed state).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cross-family conversions warn on purpose
        return _build(root)


def _build(root: Path) -> dict[str, Path]:
    gpt = api.load(NANOGPT_EXAMPLE)
    made: dict[str, Path] = {}

    def put(name: str, relative: str) -> Path:
        path = root / name.replace(":", "-") / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        made[name] = path
        return path

    shutil.copy(NANOGPT_EXAMPLE, put("nanogpt", "out/ckpt.pt"))
    fill = {"fill_missing": True, "drop_unmapped": True}
    for modded in ("modded-nanogpt", "modded-nanogpt-medium"):
        api.convert(NANOGPT_EXAMPLE, put(modded, "logs/state_step000001.pt"), modded, fill, allow_loss=["extra"])
    api.convert(NANOGPT_EXAMPLE, put("lora-nanogpt", "out/ckpt.pt"), "lora-nanogpt", {"rank": 2})
    api.convert(made["lora-nanogpt"], put("peft", "adapter"), "peft", allow_loss=["train_state"])
    peft_bin = put("peft:bin", "adapter")
    shutil.copytree(made["peft"], peft_bin)
    weights = peft_bin / "adapter_model.safetensors"
    torchfile.save(_safetensors_tree(weights), peft_bin / "adapter_model.bin")
    weights.unlink()

    api.save(gpt, put("canonical", "canonical"), "canonical")
    plain = gpt.evolve(train_state=None, extra={})
    api.save(plain, put("safetensors", "model.safetensors"), "safetensors")
    api.save(plain, put("safetensors:index", "sharded"), "safetensors", {"max_shard_size": "100KB"})

    run = put("mlx", "run")
    api.save(gpt, run, "mlx", allow_loss=["extra"])
    later = gpt.evolve(train_state=attrs.evolve(gpt.train_state, step=2))
    api.save(later, root / "mlx-step2", "mlx", allow_loss=["extra"])
    for f in (root / "mlx-step2").iterdir():
        f.rename(run / f.name)
    (root / "mlx-step2").rmdir()
    shutil.copytree(run, run / "best", ignore=lambda d, names: [n for n in names if "000002" in n or n == "best"])

    llama = llama_checkpoint()
    teacher = put("hf", "teacher")
    api.save(llama, teacher, "hf", {"max_shard_size": "1KB"})
    bin_teacher = put("hf:bin", "teacher")
    bin_teacher.mkdir()
    shutil.copy(teacher / "config.json", bin_teacher / "config.json")
    torchfile.save(dict(llama.tensors), bin_teacher / "pytorch_model.bin")
    api.convert(teacher, put("swiftkv", "student"), "swiftkv", {"kv_sharing_map": {1: 0}})
    student = api.load(made["swiftkv"])
    output = put("swiftkv:deepspeed", "output")
    tag = output / "epoch_1_global_step_40"
    tag.mkdir(parents=True)
    torchfile.save({"module": dict(student.tensors), "optimizer": None, "lr_scheduler": {"last_epoch": 40},
                     "global_steps": 40, "global_samples": 320, "ds_config": {"zero_optimization": {"stage": 2}},
                     "ds_version": "0.16.4"}, tag / "mp_rank_00_model_states.pt")
    (output / "latest").write_text(tag.name)

    api.save(gpt, put("dcp", "step-1"), "dcp", {"world_size": 2}, allow_loss=["extra"])
    api.save(gpt, put("deepspeed", "run"), "deepspeed", {"world_size": 2}, allow_loss=["extra"])

    opt = gpt.train_state.optimizer
    position = {name: str(i) for i, name in enumerate(opt.param_state)}  # moshi numbers parameters by position
    by_position = attrs.evolve(opt, param_state={position[n]: s for n, s in opt.param_state.items()},
                               groups=[{**g, "params": [position[p] for p in g["params"]]} for g in opt.groups])
    config = {"args": {"lr": 0.0001, "max_steps": 3, "run_dir": "run"}, "training_config": {"lr": 0.0001, "ttt": {}}}
    moshi = gpt.evolve(arch=Arch("generic", {}), ties={}, extra={},
                       train_state=TrainState(step=gpt.train_state.step, optimizer=by_position, config=config))
    api.save(moshi, put("moshi", "run"), "moshi")

    for name in new_formats():  # the Llama checkpoint, or nanoGPT's weights, as the format holds them
        spec = registry().spec(name)
        held = [ck for ck in (llama, plain) if not losses.find(ck, spec)]
        assert held, f"format {name!r} holds neither a Llama nor a nanoGPT checkpoint: give it an example here"
        api.save(held[0], put(name, "out"), name)
    return made


def _safetensors_tree(path: Path) -> dict[str, Tensor]:
    from ckpt_core import safetensors_io

    return safetensors_io.open_file(path)[0]


# -- mutations ---------------------------------------------------------------------------------

# JSON values that have the wrong type or an absurd value for any field
HOSTILE_VALUES = [None, True, -1, 2 ** 64, -(2 ** 63), 1.5, float("nan"), "", "..", "/etc/passwd", [], {}, [1, "a"],
                  {"a": None}, "x" * 300]
BAD_DTYPES = ["F128", "f32", "", "F8_E4M3FNUZ", None, 7, ["F32"], {"F32": 1}]
BAD_SHAPES = [[-1], [-2, -3], [2 ** 62, 2 ** 62], [2 ** 64], [1.5], ["2"], [True], [], "2,3", None, [0] * 40]
LENGTH_PREFIXES = [2 ** 64 - 1, 2 ** 64 - 8, 2 ** 63, 2 ** 63 - 1, 100_000_001, 0, 1, 7]
PICKLE_INTS = [-1, -(2 ** 31), 2 ** 31 - 1, 2 ** 40, 2 ** 64 + 1, 0]
PICKLE_STRINGS = ["", "../../../etc/passwd", "/etc/passwd", "NoSuchStorage", "F" * 1000]
PICKLE_GLOBALS = [("torch", "NoSuchStorage"), ("torch", "complex128"), ("torch._utils", "_rebuild_qtensor"),
                  ("builtins", "getattr"), ("collections", "defaultdict")]


def files_of(path: Path) -> list[Path]:
    """The files of an example: itself, or every file under it (links not followed)."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mutations(example: Path, seed: str, per_file: int) -> list[Mutation]:
    """Damaged variants of ``example``: byte-level for every file, structure-aware by file
    type (safetensors headers, JSON, YAML, torch zips and their pickles, ``latest`` files),
    and directory-level (missing files, links out of the directory, escaping names).
    ``per_file`` scales how many random byte-level cases each file gets."""
    found: list[Mutation] = []
    base = example.parent
    for f in files_of(example):
        rel = f.relative_to(base).as_posix()
        rng = random.Random(f"{seed}:{rel}")
        data = f.read_bytes()
        found += truncations(rel, data, rng, per_file)
        if f.name.endswith(".safetensors"):
            found += safetensors_mutations(rel, data, rng, per_file)
        elif f.name.endswith(".json"):
            found += json_mutations(rel, data, rng, per_file)
        elif f.name.endswith(".yaml"):
            found += text_mutations(rel, data, rng, per_file, "yaml")
        elif zipfile.is_zipfile(f):
            found += zip_mutations(rel, f, rng, per_file)
        elif f.name == "latest":
            found += latest_mutations(rel)
        else:
            found += flips(rel, data, rng, "flip", (0, len(data)), per_file)
    found += tree_mutations(example)
    return found


def sample(found: list[Mutation], cap: int, seed: str) -> list[Mutation]:
    """At most ``cap`` of ``found``, taken kind by kind in turn (seeded order within each
    kind), so every kind of damage is tried even where one kind has hundreds of cases."""
    by_kind: dict[str, list[Mutation]] = {}
    for m in found:
        by_kind.setdefault(m[0], []).append(m)
    rng = random.Random(seed)
    for group in by_kind.values():
        rng.shuffle(group)
    chosen: list[Mutation] = []
    while len(chosen) < cap and any(by_kind.values()):
        for kind in sorted(by_kind):
            if by_kind[kind] and len(chosen) < cap:
                chosen.append(by_kind[kind].pop())
    return chosen


def _write(rel: str, data: bytes) -> Callable[[Path], None]:
    def apply(root: Path) -> None:
        (root / rel).write_bytes(data)
    return apply


def truncations(rel: str, data: bytes, rng: random.Random, n: int) -> list[Mutation]:
    """The file cut at 0, 1 and len-1 bytes and at random offsets."""
    offsets = {0, 1, max(len(data) - 1, 0)} | {rng.randrange(len(data)) for _ in range(n) if data}
    return [("truncate", f"{rel} cut at {k} of {len(data)}", _write(rel, data[:k])) for k in sorted(offsets)]


def flips(rel: str, data: bytes, rng: random.Random, kind: str, region: tuple[int, int], n: int) -> list[Mutation]:
    """``n`` copies with 1-4 bytes xor-ed by a random nonzero value, inside ``region``."""
    start, end = region
    if end <= start:
        return []
    found = []
    for _ in range(n):
        damaged = bytearray(data)
        spots = sorted({rng.randrange(start, end) for _ in range(rng.randint(1, 4))})
        for at in spots:
            damaged[at] ^= rng.randrange(1, 256)
        found.append((kind, f"{rel} bytes {spots} flipped", _write(rel, bytes(damaged))))
    return found


# safetensors ------------------------------------------------------------------------------------


def encode_safetensors(header, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file of ``header`` (a dict, or raw JSON text) padded to 8 bytes, then ``data``."""
    raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def safetensors_mutations(rel: str, data: bytes, rng: random.Random, n: int) -> list[Mutation]:
    n_header = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n_header])
    body = data[8 + n_header:]
    found = flips(rel, data, rng, "flip-header", (0, 8 + n_header), n)
    found += flips(rel, data, rng, "flip-data", (8 + n_header, len(data)), n // 2)
    for length in LENGTH_PREFIXES + [n_header + 1, n_header - 1, len(data)]:
        damaged = encode_safetensors(header, body, length)
        found.append(("header-length", f"{rel} header length {length}", _write(rel, damaged)))
    names = [k for k in header if k != "__metadata__"]

    def edited(label: str, kind: str, change: Callable[[dict], None]) -> None:
        h = json.loads(json.dumps(header))
        change(h)
        found.append((kind, f"{rel} {label}", _write(rel, encode_safetensors(h, body))))

    for i in range(n):
        if not names:
            break
        name = rng.choice(names)
        other = rng.choice(names)
        begin, end = header[name]["data_offsets"]
        choices = [
            ("dtype", f"{name} dtype", lambda h, v=rng.choice(BAD_DTYPES): h[name].update(dtype=v)),
            ("shape", f"{name} shape", lambda h, v=rng.choice(BAD_SHAPES): h[name].update(shape=v)),
            ("offsets", f"{name} offsets out of range", lambda h, v=rng.choice([
                [begin, len(body) + 1], [begin, 2 ** 64], [-8, end], [end, begin], [0], [begin, end, end], "0-4",
                [len(body) + 8, len(body) + 8 + end - begin]]): h[name].update(data_offsets=v)),
            ("offsets", f"{name} overlaps {other}",
             lambda h: h[name].update(data_offsets=header[other]["data_offsets"])),
            ("entry", f"{name} entry replaced", lambda h, v=rng.choice(HOSTILE_VALUES): h.update({name: v})),
            ("entry", f"{name} entry without a field",
             lambda h, k=rng.choice(["dtype", "shape", "data_offsets"]): h[name].pop(k)),
            ("metadata", "metadata replaced", lambda h, v=rng.choice(HOSTILE_VALUES): h.update(__metadata__=v)),
        ]
        for key, value in (header.get("__metadata__") or {}).items():  # values that are JSON inside
            cut = value[:rng.randrange(len(value) + 1)] + rng.choice(["", "}", "\0", "[["])
            choices.append(("metadata", f"metadata {key} value cut", lambda h, k=key, v=cut: h["__metadata__"].update({k: v})))
        kind, label, change = rng.choice(choices)
        edited(label, kind, change)
    return found


# JSON, YAML and other small text files -----------------------------------------------------------


def text_mutations(rel: str, data: bytes, rng: random.Random, n: int, kind: str) -> list[Mutation]:
    """Malformed text: random cuts with junk appended, stray bytes, wrong top-level values."""
    found = []
    junk = [b"", b"\xff\xfe", b"\0", b"{", b"]", b"!!python/object/apply:os.system ['true']", b"NaN", b"[" * 5000]
    for _ in range(n):
        at = rng.randrange(len(data) + 1)
        damaged = data[:at] + rng.choice(junk) + (data[at + 1:] if rng.random() < 0.5 else b"")
        found.append((kind, f"{rel} damaged at {at}", _write(rel, damaged)))
    for whole in (b"", b"[]", b"null", b"42", b'"text"', b"[" * 100_000, b"\xef\xbb\xbf\xff"):
        found.append((kind, f"{rel} replaced by {whole[:12]!r}", _write(rel, whole)))
    return found


def json_paths(value, prefix=()) -> Iterator[tuple]:
    """Paths (key tuples) to every value inside a JSON document."""
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for k, v in items:
        yield (*prefix, k)
        yield from json_paths(v, (*prefix, k))


def _set(doc, path, value, delete=False):
    for k in path[:-1]:
        doc = doc[k]
    if delete and isinstance(doc, dict):
        doc.pop(path[-1])
    else:
        doc[path[-1]] = value


def json_mutations(rel: str, data: bytes, rng: random.Random, n: int) -> list[Mutation]:
    """Text damage, then wrong-typed or absurd values at random places of the document."""
    found = text_mutations(rel, data, rng, n // 2, "json")
    doc = json.loads(data)
    paths = list(json_paths(doc))
    for _ in range(n if paths else 0):
        path = rng.choice(paths)
        value = rng.choice(HOSTILE_VALUES)
        delete = rng.random() < 0.2
        changed = json.loads(data)
        _set(changed, path, value, delete)
        what = "removed" if delete else f"= {value!r:.20}"
        label = f"{rel} {'/'.join(map(str, path))} {what}"
        found.append(("json-value", label, _write(rel, json.dumps(changed).encode())))
    return found


def latest_mutations(rel: str) -> list[Mutation]:
    """A DeepSpeed ``latest`` file naming something that is not a tag folder beside it."""
    return [("escape" if "/" in tag or tag == ".." else "latest", f"{rel} names {tag!r}", _write(rel, tag.encode()))
            for tag in ["../output", "..", "/etc", "/tmp", "a/../epoch_1_global_step_40", "", "\0", "nothing_here",
                        "x" * 5000]]


# torch zip archives and their pickles -------------------------------------------------------------


def _rezip(members: list[tuple[zipfile.ZipInfo, bytes]]) -> bytes:
    """A stored (uncompressed) zip of ``members``, in order."""
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for info, content in members:
            z.writestr(zipfile.ZipInfo(info.filename, info.date_time), content)
    return out.getvalue()


def zip_mutations(rel: str, path: Path, rng: random.Random, n: int) -> list[Mutation]:
    """Flips in the structure (pickle, headers, central directory) and in tensor data, bad
    CRCs, central-directory damage, overlapping records, and edits of the pickle's ops."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        members = [(i, z.read(i.filename)) for i in infos]
    storage = [i for i in infos if "/data/" in i.filename]
    first_data = min((i.header_offset for i in storage), default=len(data))
    found = flips(rel, data, rng, "flip-header", (0, first_data), n // 2)
    cd_start = data.find(b"PK\x01\x02")
    found += flips(rel, data, rng, "flip-header", (cd_start, len(data)), n // 2)
    for i in storage[: n // 2]:
        start = i.header_offset + 30 + len(i.filename) + len(i.extra)
        found += flips(rel, data, rng, "flip-data", (start, start + i.file_size), 1)
    # central directory entries: CRC, sizes, local header offset
    entries = []
    at = cd_start
    while data[at:at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28:at + 34])
        entries.append(at)
        at += 46 + name_len + extra_len + comment_len
    eocd = data.rfind(b"PK\x05\x06")

    def patched(kind: str, label: str, offset: int, fmt: str, value: int) -> None:
        d = bytearray(data)
        struct.pack_into(fmt, d, offset, value)
        found.append((kind, f"{rel} {label}", _write(rel, bytes(d))))

    def field(offset: int) -> int:
        return struct.unpack("<I", data[offset:offset + 4])[0]

    for k, entry in enumerate(entries):
        if k % max(1, len(entries) // 4):
            continue
        patched("zip-crc", f"member {k} bad CRC", entry + 16, "<I", field(entry + 16) ^ 0x5A5A)
        patched("zip-directory", f"member {k} size +1", entry + 24, "<I", field(entry + 24) + 1)
        patched("zip-overlap", f"member {k} points at member 0", entry + 42, "<I", field(entries[0] + 42))
        patched("zip-directory", f"member {k} offset past the end", entry + 42, "<I", len(data) + 100)
    if eocd >= 0:
        for label, off, fmt, value in (("entry count", 10, "<H", 0), ("entry count", 10, "<H", 0xFFFF),
                                       ("directory size", 12, "<I", 0xFFFFFFFF), ("directory offset", 16, "<I", 0),
                                       ("directory offset", 16, "<I", len(data))):
            patched("zip-directory", f"end record {label} {value}", eocd + off, fmt, value)
    # whole-archive rewrites: deflated, a record missing, a record renamed, hostile member names
    found.append(("zip-directory", f"{rel} rewritten deflated", _write(rel, _deflated(members))))
    if storage:
        victim = rng.choice(storage)
        without = _rezip([m for m in members if m[0] is not victim])
        emptied = _rezip([(i, b"" if i is victim else c) for i, c in members])
        found.append(("zip-record", f"{rel} {victim.filename} missing", _write(rel, without)))
        found.append(("zip-record", f"{rel} {victim.filename} emptied", _write(rel, emptied)))
        found.append(("zip-record", f"{rel} {victim.filename} renamed ../", _write(rel, _rezip(
            [(zipfile.ZipInfo("../" + i.filename) if i is victim else i, c) for i, c in members]))))
    pkl = next((i for i in infos if i.filename.endswith("data.pkl")), None)
    if pkl is not None:
        found += pickle_op_mutations(rel, members, pkl, rng, n)
    return found


def _deflated(members) -> bytes:
    import io

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for info, content in members:
            z.writestr(info.filename, content)
    return out.getvalue()


def _op_bytes(kind: str, value) -> bytes:
    if kind == "int":
        return pickle.dumps(value, protocol=2)[2:-1]
    if kind == "str":
        raw = value.encode()
        return b"X" + struct.pack("<I", len(raw)) + raw
    return b"c" + value[0].encode() + b"\n" + value[1].encode() + b"\n"


def pickle_op_mutations(rel: str, members, pkl: zipfile.ZipInfo, rng: random.Random, n: int) -> list[Mutation]:
    """data.pkl with one op changed: an int (shape, stride, offset, numel) made absurd, a
    string (storage key, dtype, dict key) replaced, a global swapped, or an op dropped."""
    content = next(c for i, c in members if i is pkl)
    ops = list(pickletools.genops(content))
    ends = [pos for _, _, pos in ops[1:]] + [len(content)]
    spans = [(op, arg, pos, end) for (op, arg, pos), end in zip(ops, ends)]
    ints = [s for s in spans if s[0].name in ("BININT", "BININT1", "BININT2", "LONG1")]
    strings = [s for s in spans if s[0].name in ("BINUNICODE", "SHORT_BINUNICODE")]
    globals_ = [s for s in spans if s[0].name == "GLOBAL"]
    found = []
    for _ in range(n):
        pool = rng.choice([p for p in (ints, strings, globals_, spans[1:-1]) if p])
        op, arg, pos, end = rng.choice(pool)
        if pool is ints:
            kind, value = "int", rng.choice(PICKLE_INTS)
        elif pool is strings:
            kind, value = "str", rng.choice(PICKLE_STRINGS)
        elif pool is globals_:
            kind, value = "global", rng.choice(PICKLE_GLOBALS)
        else:
            kind, value = "drop", None
        new = content[:pos] + (b"" if kind == "drop" else _op_bytes(kind, value)) + content[end:]
        label = f"{rel} data.pkl op {op.name} {arg!r:.30} at {pos} -> {kind} {value!r:.30}"
        found.append(("pickle-op", label, _write(rel, _rezip([(i, new if i is pkl else c) for i, c in members]))))
    return found


# directories: missing files, links out, escaping names --------------------------------------------


def _outside(root: Path) -> Path:
    """A directory beside the case's root (never inside it) for link targets."""
    outside = root.parent / f"{root.name}-outside"
    outside.mkdir(exist_ok=True)
    return outside


def tree_mutations(example: Path) -> list[Mutation]:
    """A missing file, a file replaced by a directory, by a link to a copy outside the
    example, by a dangling link and by a link loop; folders replaced by links to copies
    outside; names in JSON files that point out of their directory."""
    base = example.parent
    found: list[Mutation] = []
    for f in files_of(example):
        rel = f.relative_to(base).as_posix()
        found.append(("tree", f"{rel} missing", lambda root, r=rel: (root / r).unlink()))
        found.append(("tree", f"{rel} a directory", lambda root, r=rel: ((root / r).unlink(), (root / r).mkdir())))
        found.append(("symlink", f"{rel} a link to a copy outside", lambda root, r=rel: _link_out(root, r)))
        found.append(("symlink", f"{rel} a dangling link", lambda root, r=rel: _relink(root / r, root / "nowhere")))
        found.append(("symlink", f"{rel} a link to itself", lambda root, r=rel: _relink(root / r, Path((root / r).name))))
        if f.name.endswith(".json") and not _superseded(f):
            found += escaping_names(f, rel)
    if example.is_dir():
        for d in sorted(p for p in example.rglob("*") if p.is_dir()):
            rel = d.relative_to(base).as_posix()
            found.append(("symlink", f"{rel}/ a link to a copy outside", lambda root, r=rel: _link_out(root, r)))
    return found


def _relink(path: Path, target: Path) -> None:
    path.unlink()
    path.symlink_to(target)


def _superseded(f: Path) -> bool:
    """Whether ``f`` is the state JSON of a run-directory checkpoint that reading the run
    does not open: a ``best/`` copy, or an older step than one beside it."""
    m = re.fullmatch(r"step_(\d+)_state\.json", f.name)
    if m is None:
        return False
    newer = [p for p in f.parent.glob("step_*_state.json") if p.name > f.name]
    return f.parent.name == "best" or bool(newer)


def _link_out(root: Path, rel: str) -> None:
    """Move ``rel`` out of the example (beside ``root``) and leave a link to it in its place."""
    target = _outside(root) / rel.replace("/", "_")
    (root / rel).rename(target)
    (root / rel).symlink_to(target, target_is_directory=target.is_dir())


def escaping_names(f: Path, rel: str) -> list[Mutation]:
    """For each JSON string that names a file beside the JSON file (index shards, manifest
    files, an optimizer file): that name with ``../``, as an absolute path, through a
    subfolder, and as a link out. Each time the file named is really there, so only the
    name's escape is wrong. These must be refused as unsafe."""
    doc = json.loads(f.read_bytes())
    siblings = {p.name for p in f.parent.iterdir() if p.is_file()}
    named = sorted({v for path in json_paths(doc) if isinstance(v := _get(doc, path), str) and v in siblings})
    found = []
    for name in named:
        for how in ("parent", "absolute", "subfolder", "link"):
            found.append(("escape", f"{rel} names {name} via {how}", lambda root, n=name, h=how: _escape(root, rel, n, h)))
    return found


def _get(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def _escape(root: Path, rel: str, name: str, how: str) -> None:
    index = root / rel
    if how == "link":
        _link_out(root, str(Path(rel).parent / name))
        return
    if how == "parent":
        shutil.copy(index.parent / name, index.parent.parent / name)
        new = f"../{name}"
    elif how == "absolute":
        new = str(shutil.copy(index.parent / name, _outside(root) / name))
    else:
        (index.parent / "sub").mkdir(exist_ok=True)
        new = f"sub/../{name}"
    text = index.read_text()
    index.write_text(text.replace(json.dumps(name), json.dumps(new)))


# -- hostile pickles ---------------------------------------------------------------------------------


class Reduce:
    """An object whose unpickling calls ``func(*args)``: what a hostile pickle holds."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(canary: Path) -> dict[str, tuple[Reduce, tuple[str, ...]]]:
    """Each payload creates ``canary`` when unpickled, with the names a refusal may give
    its global (``os.system`` is ``posix.system`` to pickle). ``Popen`` returns before its
    child has run: callers wait for it where they must know."""
    import builtins
    import subprocess

    code = f"open({str(canary)!r}, 'w').close()"
    return {
        "os.system": (Reduce(os.system, (f"touch {canary}",)), ("posix.system", "os.system")),
        "eval": (Reduce(builtins.eval, (code,)), ("builtins.eval",)),
        "subprocess.Popen": (Reduce(subprocess.Popen, (["touch", str(canary)],)), ("subprocess.Popen",)),
        "subprocess.check_call": (Reduce(subprocess.check_call, (["touch", str(canary)],)), ("subprocess.check_call",)),
        "exec": (Reduce(builtins.exec, (code,)), ("builtins.exec",)),
    }


# example name -> the pickle file it reads, relative to the example's parent directory
PICKLE_SITES = {
    "nanogpt": "ckpt.pt",
    "modded-nanogpt": "state_step000001.pt",
    "lora-nanogpt": "ckpt.pt",
    "peft:bin": "adapter/adapter_model.bin",
    "hf:bin": "teacher/pytorch_model.bin",
    "swiftkv:deepspeed": "output/epoch_1_global_step_40/mp_rank_00_model_states.pt",
    "moshi": "run/checkpoints/checkpoint_000001/consolidated/optimizer_state.pt",
    "deepspeed": "run/global_step1/mp_rank_00_model_states.pt",  # optimizer files: in its own tests
}
PICKLE_FORMS = ("zip, nested in dicts and lists", "zip, in place of a tensor", "zip, data.pkl replaced",
                "legacy torch file", "bare pickle, protocol 4")


def _replace_a_tensor(obj, payload) -> bool:
    """Put ``payload`` in place of the first tensor found in ``obj`` (depth first)."""
    import torch

    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, torch.Tensor):
                obj[k] = payload
                return True
            if _replace_a_tensor(v, payload):
                return True
    return False


def write_hostile(valid: Path, target: Path, form: str, payload: Reduce) -> None:
    """Write at ``target`` the pickle file ``valid`` is, with ``payload`` planted as ``form`` says."""
    import torch

    obj = torch.load(valid, map_location="cpu", weights_only=True)
    nested = {**obj, "hook": {"a": [1, {"b": payload}]}} if isinstance(obj, dict) else {"hook": [payload]}
    if form == "zip, nested in dicts and lists":
        torch.save(nested, target)
    elif form == "zip, in place of a tensor":
        assert _replace_a_tensor(obj, payload), f"{valid} holds no tensor"
        torch.save(obj, target)
    elif form == "zip, data.pkl replaced":
        with zipfile.ZipFile(valid) as z:
            members = [(i, z.read(i.filename)) for i in z.infolist()]
        evil = pickle.dumps({"model": payload, "step": 1}, protocol=2)
        target.write_bytes(_rezip([(i, evil if i.filename.endswith("/data.pkl") else c) for i, c in members]))
    elif form == "legacy torch file":
        torch.save(nested, target, _use_new_zipfile_serialization=False)
    else:
        target.write_bytes(pickle.dumps({"model": {"w": [1.0, 2.0]}, "hook": {"a": [payload]}}, protocol=4))


# -- pickle structure and resource bombs ---------------------------------------------------------------
#
# Small files that claim or expand to far more than they hold. Each is built here, in
# milliseconds, from bytes (no torch): pickle ops planted in a valid ``data.pkl``, and zip
# archives written by hand so that every header field can lie.


def _memo(op_put: bool, index: int) -> bytes:
    """LONG_BINPUT / LONG_BINGET of memo slot ``index`` (high slots: clear of the pickle's own)."""
    return (b"r" if op_put else b"j") + struct.pack("<I", index)


def shared_ops(levels: int = 60) -> bytes:
    """A list of a tuple of two ints and ``levels`` tuples each holding the one before twice
    (memo GETs): ~12 bytes a level, 2**levels items to a walk that follows every reference."""
    base = 900_000
    ops = b"](K\x01K\x02\x86" + _memo(True, base)  # the list, MARK, the first tuple
    for i in range(1, levels + 1):
        ops += _memo(False, base + i - 1) * 2 + b"\x86" + _memo(True, base + i)
    return ops + b"e"  # APPENDS: every level into the list


def cyclic_ops() -> bytes:
    """A list that contains itself (and a dict holding it, to be found anywhere)."""
    return b"]" + _memo(True, 900_000) + _memo(False, 900_000) + b"a"


def deep_ops(depth: int = 100_000) -> bytes:
    """Lists nested ``depth`` deep: push them all, then append each into the one below."""
    return b"]" * depth + b"a" * (depth - 1)


STRUCTURE_BOMBS = {"shared": shared_ops, "cyclic": cyclic_ops, "deep": deep_ops}
# what the refusal of each says
STRUCTURE_WORDS = {"shared": "expand to more than", "cyclic": "contains itself", "deep": "more than 100 deep"}


def plant(data_pkl: bytes, key: str, ops: bytes) -> bytes:
    """``data_pkl`` (a pickle of a dict) with one more item, ``key`` -> the object ``ops`` build."""
    assert data_pkl.endswith(b"."), "not a pickle"
    raw = key.encode()
    return data_pkl[:-1] + b"X" + struct.pack("<I", len(raw)) + raw + ops + b"s."


def with_pickle(archive: Path, target: Path, change: Callable[[bytes], bytes]) -> None:
    """Write at ``target`` the torch zip ``archive`` with its ``data.pkl`` changed (stored)."""
    with zipfile.ZipFile(archive) as z:
        members = [(i, z.read(i.filename)) for i in z.infolist()]
    target.write_bytes(_rezip([(i, change(c) if i.filename.endswith("data.pkl") else c) for i, c in members]))


@attrs.frozen
class Record:
    """One record of a hand-written zip: what it holds and how its headers may lie."""

    name: str
    data: bytes  # the bytes stored (compressed already when ``method`` is 8)
    method: int = 0  # 0 stored, 8 deflated
    size: int | None = None  # the size the headers declare (default: the real one)
    crc: int | None = None  # the CRC-32 they declare (default: of ``data``, when stored)
    local_name: str | None = None  # a different name in the local header
    local_size: int | None = None  # a different size in the local header
    local_extra_len: int | None = None  # a different extra length in the local header (the bytes stay)


def zip_bytes(records: list[Record]) -> bytes:
    """A zip archive of ``records`` with sizes in the headers (no data descriptors) and a
    zip64 extra field where a declared size needs one."""
    out, central = bytearray(), bytearray()
    for r in records:
        size = len(r.data) if r.size is None else r.size
        crc = zlib_crc(r.data) if r.crc is None else r.crc
        big = size >= 0xFFFFFFFF
        extra = struct.pack("<HHQQ", 1, 16, size, len(r.data)) if big else b""
        name = r.name.encode()
        local_name = (r.local_name or r.name).encode()
        local_size = r.local_size if r.local_size is not None else size
        offset = len(out)
        out += struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 45 if big else 20, 0x800, r.method, 0, 0x21, crc,
                           0xFFFFFFFF if big else len(r.data), 0xFFFFFFFF if big else local_size, len(local_name),
                           len(extra) if r.local_extra_len is None else r.local_extra_len) + local_name + extra + r.data
        central += struct.pack("<4sHHHHHHIIIHHHHHII", b"PK\x01\x02", 45, 45 if big else 20, 0x800, r.method, 0, 0x21,
                               crc, 0xFFFFFFFF if big else len(r.data), 0xFFFFFFFF if big else size, len(name),
                               len(extra), 0, 0, 0, 0, offset) + name + extra
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(records), len(records), len(central), len(out), 0)
    return bytes(out + central + end)


def zlib_crc(data: bytes) -> int:
    import zlib

    return zlib.crc32(data)


def deflate_zeros(size: int) -> bytes:
    """A raw DEFLATE stream that inflates to ``size`` zero bytes (a multiple of 1 MiB), built
    in milliseconds: after a full flush each MiB of zeros compresses to the same bytes."""
    import zlib

    mib = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = co.compress(mib) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(mib) + co.flush(zlib.Z_FULL_FLUSH)
    return first + again * (size // len(mib) - 1) + co.flush()


def deflate(data: bytes) -> bytes:
    import zlib

    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    return co.compress(data) + co.flush()


def archive_records(archive: Path) -> list[Record]:
    """The records of a torch zip file, stored, as ``zip_bytes`` takes them."""
    with zipfile.ZipFile(archive) as z:
        return [Record(i.filename, z.read(i.filename)) for i in z.infolist()]


def zip_bombs(archive: Path) -> dict[str, bytes]:
    """The torch zip ``archive`` rewritten so that its headers lie or its data.pkl is a
    bomb: each must be refused as corrupt (``ZIP_WORDS`` says why), in bounded memory and
    time."""
    records = archive_records(archive)
    pkl = next(i for i, r in enumerate(records) if r.name.endswith("data.pkl"))
    storage = next(i for i, r in enumerate(records) if "/data/" in r.name and r.data)

    def swapped(i: int, **change) -> bytes:
        return zip_bytes([attrs.evolve(r, **change) if k == i else r for k, r in enumerate(records)])

    ten_gib = 10 << 30
    return {
        "data.pkl deflated, declaring 10 GiB": swapped(pkl, data=deflate(records[pkl].data), method=8, size=ten_gib,
                                                       crc=zlib_crc(records[pkl].data)),
        "data.pkl declaring 9.9 KB, inflating to 10 GiB": swapped(pkl, data=deflate_zeros(ten_gib), method=8,
                                                                  size=9_900, crc=zlib_crc(bytes(9_900))),
        "data.pkl a zip bomb declaring its 10 GiB": swapped(pkl, data=deflate_zeros(ten_gib), method=8, size=ten_gib,
                                                            crc=0),
        "a storage record deflated": swapped(storage, data=deflate(records[storage].data), method=8,
                                             crc=zlib_crc(records[storage].data), size=len(records[storage].data)),
        "a local header naming another record": swapped(storage, local_name=records[pkl].name),
        "a local header with another size": swapped(storage, local_size=len(records[storage].data) + 4),
        "a local extra length shifting the data by 4": swapped(storage, local_extra_len=4),
    }


ZIP_WORDS = {
    "data.pkl deflated, declaring 10 GiB": "too large to be a checkpoint's structure",
    "data.pkl declaring 9.9 KB, inflating to 10 GiB": "pickle",  # 9.9 KB of zeros, read and no more: not a pickle
    "data.pkl a zip bomb declaring its 10 GiB": "too large to be a checkpoint's structure",
    "a storage record deflated": "is compressed",
    "a local header naming another record": "disagrees with the zip directory (it names",
    "a local header with another size": "disagrees with the zip directory (size",
    "a local extra length shifting the data by 4": "disagrees with the zip directory",
}


def many_tensors(path: Path, count: int) -> None:
    """A torch zip file holding ``{"t0000000": tensor, "t0000001": ...}``: ``count``
    one-element F32 tensors, each a view of one shared storage (so the file is mostly
    pickle, 38 bytes a tensor). Each tensor's ops are one template; numpy fills in the
    digits of its key and its offset, so 3 million take a second to write."""
    import numpy as np

    head = (b"\x80\x02}q\x00("  # protocol 2, the top dict, MARK
            b"ctorch._utils\n_rebuild_tensor_v2\nq\x010"  # each shared object memoized, then popped
            b"(X\x07\x00\x00\x00storageq\x02ctorch\nFloatStorage\nq\x03X\x01\x00\x00\x000q\x04X\x03\x00\x00\x00cpuq\x05"
            + b"J" + struct.pack("<i", count) + b"tq\x06Qq\x070"  # the storage: BINPERSID of the id tuple
            + b"ccollections\nOrderedDict\nq\x08)Rq\x090")  # no backward hooks, one dict for all
    key = b"X\x08\x00\x00\x00t0000000"  # SHORT key: BINUNICODE of 8 characters
    call = b"h\x01(h\x07J\x00\x00\x00\x00K\x01\x85K\x01\x85\x89h\x09tR"  # rebuild(storage, offset, (1,), (1,), False, hooks)
    entries = np.frombuffer((key + call) * count, np.uint8).reshape(count, -1).copy()
    numbers = np.arange(count, dtype="<i4")
    for k in range(7):  # the key's digits, last first
        entries[:, len(key) - 1 - k] = ord("0") + numbers // 10 ** k % 10
    at = len(key) + call.index(b"J") + 1
    entries[:, at:at + 4] = numbers.view(np.uint8).reshape(count, 4)
    data_pkl = head + entries.tobytes() + b"u."
    path.write_bytes(zip_bytes([Record("archive/data.pkl", data_pkl), Record("archive/version", b"3\n"),
                                Record("archive/data/0", bytes(4 * count))]))


def measured(call: Callable[[], object]) -> tuple[BaseException | None, float, int]:
    """Run ``call`` in this process: (the error it raised or None, seconds, the peak of the
    resident set above where it started, in bytes). The kernel's high-water mark is reset
    first (``/proc/self/clear_refs``), so an earlier peak of the test run does not count."""
    import time

    def kib(field: str) -> int:
        return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))

    Path("/proc/self/clear_refs").write_text("5")
    start, began = kib("VmRSS"), time.perf_counter()
    error = None
    try:
        call()
    except Exception as e:  # noqa: BLE001 - returned for the caller to judge
        error = e
    return error, time.perf_counter() - began, (kib("VmHWM") - start) * 1024
