"""Safetensors files and sharded directories, read lazily and written by streaming.

Our own reader and writer on top of the format (the ``safetensors`` package loads whole
files and trusts what real writers produce; we need lazy file ranges, strict validation
with one-line errors, and file-to-file copies):

- ``read_header`` validates everything before a byte of data is used: header length bound,
  UTF-8 JSON object, no duplicate keys, known dtypes, offsets in bounds, contiguous and
  non-overlapping, size = prod(shape) x itemsize, string metadata. It accepts what real
  writers do: ``"__metadata__": null`` (MLX), unpadded headers, offsets not in key order.
- ``write_file`` writes the header, then each tensor's bytes: a tensor that is an
  unchanged range of another file is copied kernel-side (``os.copy_file_range``), anything
  else is streamed in chunks. Peak memory is one tensor (or one chunk for file ranges).
- ``read_index`` / ``open_sharded`` / ``write_sharded`` handle HF-style
  ``*.safetensors.index.json`` directories; shard names must be plain names in the same
  directory.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import struct
from collections.abc import Mapping
from pathlib import Path

from . import dtypes, jsonfile, pool, progress
from .errors import CorruptInput, NotFound, UnsafeInput, UsageError
from .files import open_regular
from .tensor import CHUNK_SIZE, FileRange, Tensor

MAX_HEADER = 100_000_000  # the safetensors library's own bound
INDEX_SUFFIX = ".safetensors.index.json"


def read_header(path: Path | str) -> tuple[dict[str, tuple[str, tuple[int, ...], int, int]], dict[str, str] | None, int]:
    """Validated header of a safetensors file.

    Returns ``(entries, metadata, data_start)`` where entries maps each name, in header
    order, to ``(dtype, shape, begin, end)`` (offsets relative to ``data_start``).
    """
    path = Path(path)
    try:
        with open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise CorruptInput(f"{path}: not a safetensors file ({size} bytes, too short for a header)")
            (n,) = struct.unpack("<Q", prefix)
            if n > MAX_HEADER:
                raise CorruptInput(f"{path}: header length {n} exceeds the {MAX_HEADER}-byte limit (not a safetensors file?)")
            if 8 + n > size:
                raise CorruptInput(f"{path}: header length {n} runs past the end of the {size}-byte file (truncated?)")
            raw = f.read(n)
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except IsADirectoryError:
        raise CorruptInput(f"{path}: is a directory, not a safetensors file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptInput(f"{path}: header is not UTF-8 (not a safetensors file?)") from None
    if not text.lstrip().startswith("{"):
        raise CorruptInput(f"{path}: header is not a JSON object (not a safetensors file?)")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise CorruptInput(f"{path}: header is not valid JSON ({e})") from None
    data_size = size - 8 - n
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise CorruptInput(f"{path}: __metadata__ must map strings to strings")
    entries = {}
    for name, info in header.items():
        entries[name] = _check_entry(path, name, info, data_size)
    spans = sorted((begin, end, name) for name, (_, _, begin, end) in entries.items())
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise CorruptInput(f"{path}: tensor {name!r} overlaps the one before it")
        if begin > position:
            raise CorruptInput(f"{path}: {begin - position} bytes before tensor {name!r} belong to no tensor")
        position = end
    if position != data_size:
        raise CorruptInput(f"{path}: data section is {data_size} bytes but the tensors cover {position} (truncated or padded?)")
    return entries, metadata, 8 + n


def _no_duplicates(pairs):
    """The JSON object as a dict; ValueError for a repeated key, or a string that is not
    Unicode text (a lone surrogate such as ``"\\ud800"``: valid JSON, but no UTF-8 spells
    it and the Rust safetensors refuses it)."""
    keys = [k for k, _ in pairs]
    if len(keys) != len(set(keys)):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"duplicate key {dup!r}")
    _unicode_text((*keys, *(v for _, v in pairs if isinstance(v, str))))
    return dict(pairs)


def _unicode_text(texts) -> None:
    """ValueError for a string that is not Unicode text (a lone surrogate such as
    ``"\\ud800"``, which JSON can spell and UTF-8 cannot)."""
    for text in texts:
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError(f"{text!r} is not Unicode text (a lone surrogate)") from None


def _check_entry(path: Path, name: str, info, data_size: int):
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise CorruptInput(f"{path}: tensor {name!r} needs exactly dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in dtypes.DTYPES:
        raise CorruptInput(f"{path}: tensor {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
        raise CorruptInput(f"{path}: tensor {name!r} has a bad shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
        raise CorruptInput(f"{path}: tensor {name!r} has bad data_offsets {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise CorruptInput(f"{path}: tensor {name!r} data {begin}..{end} lies outside the {data_size}-byte data section")
    expected = math.prod(shape) * dtypes.get(dtype).itemsize
    if end - begin != expected:
        raise CorruptInput(f"{path}: tensor {name!r} has {end - begin} bytes, {dtype} {shape} needs {expected}")
    return dtype, tuple(shape), begin, end


def open_file(path: Path | str) -> tuple[dict[str, Tensor], dict[str, str] | None]:
    """Lazy tensors of a safetensors file, in header order, and its metadata."""
    path = Path(path)
    entries, metadata, start = read_header(path)
    tensors = {name: Tensor.from_file(path, start + begin, dtype, shape)
               for name, (dtype, shape, begin, _end) in entries.items()}
    return tensors, metadata


# -- sharded directories ---------------------------------------------------------------


def find_index(directory: Path) -> Path | None:
    """The directory's ``*.safetensors.index.json``, preferring ``model.``; None if none."""
    preferred = directory / f"model{INDEX_SUFFIX}"
    if preferred.is_file():
        return preferred
    found = sorted(directory.glob(f"*{INDEX_SUFFIX}"))
    return found[0] if found else None


def read_index(index_path: Path | str) -> tuple[dict[str, Path], dict]:
    """``weight_map`` of an index (tensor name -> shard path) and its ``metadata``.

    Shard names must be plain file names in the index's directory: no separators, no
    ``..``, no links that lead out of it.
    """
    index_path = Path(index_path)
    data = jsonfile.read_object(index_path)
    if not isinstance(data.get("weight_map"), dict):
        raise CorruptInput(f"{index_path}: no weight_map object")
    directory = index_path.parent
    shards: dict[str, Path] = {}
    weight_map = {}
    for name, shard in data["weight_map"].items():
        if not isinstance(shard, str) or shard not in shards:  # plain_file refuses a non-string
            shards[shard] = plain_file(directory, shard, index_path)
        weight_map[name] = shards[shard]
    metadata = data.get("metadata") or {}
    return weight_map, metadata if isinstance(metadata, dict) else {}


def plain_file(directory: Path, name, named_by: Path) -> Path:
    """``directory / name`` where ``named_by`` (an index or manifest) names the file.

    The name must be a plain file name (no separators, no ``..``) of an existing file that
    does not link out of the directory: UnsafeInput otherwise, NotFound if it is missing.
    The one link out allowed is the Hugging Face hub cache's own layout, where every file
    of ``<repo>/snapshots/<revision>/`` links to ``<repo>/blobs/<hash>``.
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise UnsafeInput(f"{named_by}: file name {name!r} is not a plain file name in the same directory")
    path = directory / name
    if path.is_symlink():
        try:
            target = path.resolve()
        except (OSError, RuntimeError):  # a link loop (RuntimeError before Python 3.13)
            raise NotFound(f"{named_by}: file {name!r} is a link that leads nowhere (a loop)") from None
        if not _link_allowed(directory.resolve(), target):
            raise UnsafeInput(f"{named_by}: file {name!r} is a link out of {directory}")
    if not path.is_file():
        raise NotFound(f"{named_by}: file {name!r} is missing")
    return path


def _link_allowed(directory: Path, target: Path) -> bool:
    if target.parent == directory:
        return True
    return directory.parent.name == "snapshots" and target.parent == directory.parent.parent / "blobs"


def open_sharded(index_path: Path | str) -> tuple[dict[str, Tensor], dict]:
    """Lazy tensors of every shard an index names and its metadata, in the order they were
    written: shard by shard (numbered names sort in shard order), each in header order.
    (Not weight_map order: writers sort it by name, which loses the model's order.)

    Every shard's header is validated; a tensor the index names but its shard lacks, or a
    shard tensor the index does not name, is an error.
    """
    index_path = Path(index_path)
    weight_map, metadata = read_index(index_path)
    opened: dict[Path, dict[str, Tensor]] = {}
    for name, shard in weight_map.items():
        if shard not in opened:
            opened[shard] = open_file(shard)[0]
        if name not in opened[shard]:
            raise CorruptInput(f"{index_path}: index puts {name!r} in {shard.name}, which has no such tensor")
    for shard, content in opened.items():
        stray = [n for n in content if weight_map.get(n) != shard]
        if stray:
            raise CorruptInput(f"{shard}: tensor {stray[0]!r} is not in the index {index_path.name}")
    ordered = {name: t for shard in sorted(opened, key=lambda p: p.name) for name, t in opened[shard].items()}
    return ordered, metadata


def parse_size(text: str | int) -> int:
    """Bytes in a size like ``5GB`` (decimal, as HF counts), ``2GiB`` (binary) or ``1000``."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d{1,19}(?:\.\d{1,19})?)\s*(?:([KMGT])(i?)B?|B?)\s*", str(text), re.IGNORECASE)
    if not m:
        raise UsageError(f"not a size: {text!r} (try 5GB, 500MB or 2GiB)")
    number, unit, binary = m.groups()
    if not unit:
        return int(float(number))
    return int(float(number) * (1024 if binary else 1000) ** ("KMGT".index(unit.upper()) + 1))


def plan_shards(tensors: Mapping[str, Tensor], max_bytes: int) -> list[list[str]]:
    """Names per shard, in order: a new shard starts when the next tensor would push the
    current one past ``max_bytes``; a tensor larger than the limit gets a shard alone."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, t in tensors.items():
        if shards[-1] and size + t.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += t.nbytes
    return shards


def shard_names(prefix: str, count: int) -> list[str]:
    """HF shard file names: ``model.safetensors`` alone, else ``model-00001-of-00003...``."""
    if count == 1:
        return [f"{prefix}.safetensors"]
    return [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_sharded(directory: Path, tensors: Mapping[str, Tensor], max_shard_size: int | str = "5GB",
                  metadata: dict[str, str] | None = None, prefix: str = "model",
                  checksums: bool = False, index: bool | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """Write ``tensors`` as HF-style shards into ``directory`` (which must exist).

    Writes ``<prefix>.safetensors`` alone when everything fits one shard, otherwise
    numbered shards; the index ``<prefix>.safetensors.index.json`` (sorted keys, indent 2)
    is written when there are several shards, or as ``index`` says. The shards are written
    by ``pool.run``, several at once when the write has workers. Returns the weight map
    (name -> shard file name) and the per-tensor checksums (empty unless ``checksums``).
    """
    groups = plan_shards(tensors, parse_size(max_shard_size))
    names = shard_names(prefix, len(groups))
    jobs = [functools.partial(write_file, directory / file_name, {n: tensors[n] for n in group}, metadata,
                              checksums=checksums) for file_name, group in zip(names, groups)]
    sums: dict[str, str] = {}
    weight_map = {}
    for file_name, group, file_sums in zip(names, groups, pool.run(jobs)):
        sums.update(file_sums)
        weight_map.update(dict.fromkeys(group, file_name))
    if index or (index is None and len(groups) > 1):
        content = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": dict(sorted(weight_map.items()))}
        write_bytes(directory / f"{prefix}{INDEX_SUFFIX}", (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())
    return weight_map, sums


# -- writing ---------------------------------------------------------------------------


def build_header(tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """The 8-byte length and JSON header for ``tensors`` laid out in order, padded with
    spaces so the data starts 8-byte aligned (as the safetensors library writes)."""
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("safetensors metadata must map strings to strings")
        header["__metadata__"] = metadata
    if "__metadata__" in tensors:
        raise UsageError("a tensor cannot be named __metadata__ in a safetensors file (the name is reserved)")
    try:  # what no safetensors reader would read back (a name from a torch pickle, say)
        _unicode_text((*tensors, *(metadata or {}).keys(), *(metadata or {}).values()))
    except ValueError as e:
        raise CorruptInput(f"a tensor name or metadata {e}: no safetensors reader reads it") from None
    offset = 0
    for name, t in tensors.items():
        header[name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text


def write_file(path: Path, tensors: Mapping[str, Tensor], metadata: dict[str, str] | None = None,
               checksums: bool = False) -> dict[str, str]:
    """Write a safetensors file at ``path`` (a new file; the caller makes it atomic).

    Returns ``{name: "crc32:xxxxxxxx"}`` when ``checksums`` is set. The file is fsync-ed.
    """
    from concurrent.futures import ThreadPoolExecutor  # (imports logging: only writers pay for it)

    sums: dict[str, int] = {}
    pending = {}
    with open(path, "xb", buffering=0) as out, ThreadPoolExecutor(max_workers=1) as checksummer:
        try:
            write_all(out, build_header(tensors, metadata))
            for name, t in tensors.items():
                ranges = t.file_ranges() if t.nbytes else None
                if ranges is not None and (len(ranges) == 1 or not checksums):
                    # The kernel copies (each part of a concatenation, such as a ZeRO parameter
                    # straddling ranks); the checksums of file ranges are read on the other
                    # core meanwhile, and while the file is fsync-ed (collected at the end).
                    if checksums:
                        pending[name] = checksummer.submit(crc32_range, ranges[0])
                    for rng in ranges:
                        copy_range(rng, out)
                else:
                    crc = 0
                    for chunk in t.iter_chunks():
                        write_all(out, chunk)
                        if checksums:
                            crc = crc32(chunk, crc)
                        progress.advance(len(chunk))
                    chunk = None  # a computed tensor's last chunk holds its whole array: free it before the next is made
                    if checksums:
                        sums[name] = crc
            os.fsync(out.fileno())
            sums.update((name, future.result()) for name, future in pending.items())
        except BaseException:
            for future in pending.values():
                future.cancel()
            raise
    return {name: f"crc32:{sums[name]:08x}" for name in tensors if name in sums}


def crc32_of(t: Tensor) -> str:
    """The checksum ``write_file`` records for a tensor's bytes."""
    if t.file_range is not None:
        return f"crc32:{crc32_range(t.file_range):08x}"
    crc = 0
    for chunk in t.iter_chunks():
        crc = crc32(chunk, crc)
    return f"crc32:{crc:08x}"


def crc32(data, crc: int = 0) -> int:
    """zlib's CRC-32 of ``data`` continuing ``crc``, computed by ISA-L: the same numbers at
    about 4x the speed of zlib's here (a checksum pass costs a tenth of a second per GB,
    not a third), so writing a canonical directory costs little more than copying it."""
    from isal.isal_zlib import crc32 as isal_crc32  # (only writers and verifiers pay for the import)

    return isal_crc32(data, crc)


def crc32_range(rng: FileRange) -> int:
    """The CRC-32 of a file range, read through one reused buffer (no allocation per chunk)."""
    crc, offset, left = 0, rng.offset, rng.nbytes
    buffer = memoryview(bytearray(max(1, min(CHUNK_SIZE, left))))
    with open(rng.path, "rb", buffering=0) as f:
        while left:
            done = os.preadv(f.fileno(), [buffer[:min(left, len(buffer))]], offset)
            if not done:
                raise CorruptInput(f"{rng.path}: file ends inside a tensor's data (truncated?)")
            crc = crc32(buffer[:done], crc)
            offset += done
            left -= done
    return crc


def copy_range(rng: FileRange, out) -> None:
    """Append a file range to the open file ``out`` without passing the bytes through
    Python (``copy_file_range``; read and written where the kernel cannot). Every writer of
    file-range tensors uses it (safetensors here, ``torchfile.save``)."""
    with open(rng.path, "rb") as src:
        offset, left = rng.offset, rng.nbytes
        while left:
            step = min(left, CHUNK_SIZE)
            try:
                done = os.copy_file_range(src.fileno(), out.fileno(), step, offset)
            except (AttributeError, OSError):
                src.seek(offset)
                data = src.read(step)
                done = len(data)
                write_all(out, data)
            if done == 0:
                raise CorruptInput(f"{rng.path}: file ends inside a tensor's data (truncated?)")
            start_writeback(out)
            offset += done
            left -= done
            progress.advance(done)


def write_all(out, data) -> None:
    """Write all of ``data`` to the open file ``out`` (an unbuffered write may be partial);
    a large piece is sent on its way to the disk at once (``start_writeback``)."""
    view = memoryview(data).cast("B")
    large = len(view) >= WRITEBACK_FROM
    while view:
        view = view[out.write(view):]
    if large:
        start_writeback(out)


WRITEBACK_FROM = 1 << 20  # bytes written at once from which write_all starts their write-out


def start_writeback(out) -> None:
    """Start writing ``out``'s dirty pages to the disk now, without waiting (Linux
    ``sync_file_range(SYNC_FILE_RANGE_WRITE)``; nothing elsewhere). The disk then works
    while the copy goes on, and the writer's final fsync waits for the last pieces only,
    where ``cp`` + ``sync`` copies everything first and then waits for all of it: measured
    here, a 1 GB copy and fsync in 0.8 s instead of ``cp`` + ``sync``'s 0.95 s."""
    call = _sync_file_range()
    if call is not None:
        call(out.fileno(), 0, 0, 2)  # offset 0, length 0: the whole file; 2: SYNC_FILE_RANGE_WRITE


@functools.cache
def _sync_file_range():
    import ctypes

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return call


def write_bytes(path: Path, data: bytes) -> None:
    """Write a small new file and fsync it."""
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
