"""The zip archive a torch file is: its records, each checked against the central directory,
and ``data.pkl`` read within bounds.

``zipfile`` trusts a record's local header for where the data starts and inflates up to
2 GiB in one call; a damaged or hostile archive could then give wrong bytes silently (a
shifted extra field) or fill memory from a few KB (a lying size). Here every local header
must agree with the central directory (name, method, sizes and CRC-32 where it states
them, a well-formed extra field, data ending before the next record and its data
descriptor right after it), which costs a header read, never a data read. (A damaged
header that still describes a valid layout is found only by the CRC-32: ``check_archive``.)
``data.pkl`` must declare at most ``MAX_PICKLE_BYTES`` and is inflated in small pieces,
never past what it declares.

An archive may also be a byte range of a larger file (``span``: offset and length), as each
item of a ``torch.distributed.checkpoint`` ``.distcp`` file is a whole ``torch.save`` zip:
it is read as if it were a file of its own, and the data starts it gives are the file's.
"""

from __future__ import annotations

import contextlib
import io
import os
import struct
import zipfile
from pathlib import Path
from typing import NamedTuple

from .. import files
from ..errors import CorruptInput, NotFound

MAX_PICKLE_BYTES = 256 * 1024 * 1024  # data.pkl holds structure, not weights
_READ_CHUNK = 1024 * 1024  # inflate this much at a time
_EDGE = 4096  # bytes read at once from each end of a zip inside a file (``_Window``)
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header (30 bytes)
_DESCRIBED = 0x0008  # sizes and CRC-32 follow the data (in a data descriptor)
_ZIP64_MARK = 0xFFFFFFFF  # a 4-byte size whose value is in the zip64 extra field

# What a damaged zip raises from ``zipfile`` (an unknown zip version: NotImplementedError)
ZIP_ERRORS = (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError)


class Member(NamedTuple):
    """A record of the archive and where its data starts in the file."""

    info: zipfile.ZipInfo
    start: int


Span = tuple[int, int]  # (offset, length): where an archive lies inside a larger file


class _Window(io.RawIOBase):
    """``length`` bytes of an open file from ``offset``, as a file of their own. Each end
    (``_EDGE`` bytes) is read once, up front: a zip's local headers, pickle and central
    directory lie there, so the many small reads that parse it cost no system call (a DCP
    checkpoint's hundreds of items are parsed this way)."""

    def __init__(self, f, offset: int, length: int, name: str):
        self.f, self.offset, self.length, self.pos, self.name = f, offset, length, 0, name
        self.ends: tuple[tuple[int, bytes], ...] = ()  # read at the first read (its errors are a read's)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, pos: int, whence: int = 0) -> int:
        self.pos = max(0, {0: pos, 1: self.pos + pos, 2: self.length + pos}[whence])
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.length - self.pos))
        if not self.ends:
            edge = min(self.length, _EDGE)
            self.ends = ((0, os.pread(self.f.fileno(), edge, self.offset)),
                         (self.length - edge, os.pread(self.f.fileno(), edge, self.offset + self.length - edge)))
        for start, data in self.ends:  # (shorter than asked when the file is: then read below, as before)
            if start <= self.pos and self.pos + count <= start + len(data):
                buffer[:count] = data[self.pos - start:self.pos - start + count]
                self.pos += count
                return count
        self.f.seek(self.offset + self.pos)
        data = self.f.read(count)
        buffer[:len(data)] = data
        self.pos += len(data)
        return len(data)


def where(path: Path | str, span: Span | None = None) -> str:
    """How errors name an archive: its file, and its range when it is part of one."""
    return str(path) if span is None else f"{path} (the zip at byte {span[0]}, {span[1]} bytes)"


@contextlib.contextmanager
def _open(path: Path | str, span: Span | None):
    """The archive at ``path`` (or its ``span``) open for reading, as a file of its own."""
    with files.open_regular(path) as f:
        yield f if span is None else _Window(f, *span, where(path, span))


def is_zip(path: Path | str) -> bool:
    """``zipfile.is_zipfile``, but False (not BadZipFile) for a damaged ZIP64 end record, and
    for anything but a regular file (never opening a FIFO, which would block)."""
    try:
        with files.open_regular(path) as f:
            return zipfile.is_zipfile(f)
    except (zipfile.BadZipFile, CorruptInput, NotFound, OSError):
        return False


VERIFY_OPTION = {"verify": "true: check every record of the torch archive against its CRC-32 while reading (reads all data)"}


def check_archive(path: Path | str) -> None:
    """Read every record of a torch zip file and check it against the CRC-32 torch wrote.

    Loading with ``mmap`` never reads the data, so a flipped bit inside a tensor would be
    copied along unnoticed; this reads it all (formats offer it as ``--option verify=true``).
    CorruptInput names the first damaged record.
    """
    members(path)
    try:
        with files.open_regular(path) as f, zipfile.ZipFile(f) as archive:
            bad = archive.testzip()
    except ZIP_ERRORS as e:
        raise CorruptInput(f"{path}: not a readable torch zip archive ({e})") from None
    if bad is not None:
        raise CorruptInput(f"{path}: record {bad} does not match its CRC-32: the file is damaged")


def data_offset(f, info: zipfile.ZipInfo, end: int | None = None) -> int:
    """Where the data of record ``info`` starts in the open zip file ``f``: after its local
    header, whose name and extra lengths may differ from the central directory's. The
    header must agree with the central directory, and the data must end by ``end`` (the
    next record); CorruptInput otherwise. Reads headers and a data descriptor, not data."""
    f.seek(info.header_offset)
    header = f.read(_LOCAL.size)
    if len(header) != _LOCAL.size or header[:4] != b"PK\x03\x04":
        raise CorruptInput(f"{f.name}: bad zip local header for {info.filename}")
    _, _, flags, method, _, _, crc, packed, size, name_len, extra_len = _LOCAL.unpack(header)
    name, extra = f.read(name_len), f.read(extra_len)
    start = info.header_offset + _LOCAL.size + name_len + extra_len
    problem = _disagreement(f, info, flags, method, (crc, packed, size), name, extra, start, end)
    if problem:
        raise CorruptInput(f"{f.name}: the local header of {info.filename} disagrees with the zip directory ({problem}): "
                           "the file is damaged")
    return start


def _disagreement(f, info, flags, method, stated, name, extra, start, end) -> str:
    """What of a local header contradicts the central directory entry ``info`` ('' if nothing)."""
    if name.decode("utf-8" if flags & 0x800 else "cp437", "replace") != info.orig_filename:
        return f"it names {name[:80]!r}"
    if method != info.compress_type:
        return f"compression method {method}, not {info.compress_type}"
    if not flags & _DESCRIBED:
        for what, local, central in zip(("CRC-32", "compressed size", "size"), stated,
                                         (info.CRC, info.compress_size, info.file_size)):
            if local != central and not (what != "CRC-32" and local == _ZIP64_MARK):
                return f"{what} {local}, not {central}"
    at = 0
    while at + 4 <= len(extra):
        at += 4 + int.from_bytes(extra[at + 2:at + 4], "little")
    if at != len(extra):
        return "a malformed extra field"
    if end is not None and start + info.compress_size > end:
        return "its data runs into the next record"
    if flags & _DESCRIBED and info.compress_size:
        f.seek(start + info.compress_size)
        descriptor = f.read(24)
        if descriptor[:4] == b"PK\x07\x08":  # the signature is optional
            descriptor = descriptor[4:]
        sizes = (info.compress_size, info.file_size)
        narrow = len(descriptor) >= 12 and struct.unpack_from("<II", descriptor, 4) == sizes
        wide = len(descriptor) >= 20 and struct.unpack_from("<QQ", descriptor, 4) == sizes  # zip64
        if descriptor[:4] != info.CRC.to_bytes(4, "little") or not (narrow or wide):
            return "its data descriptor is not where its sizes say"
    return ""


def members(path: Path | str, span: Span | None = None) -> dict[str, Member]:
    """Every record of the torch zip file at ``path`` (or at its ``span``) by name, each
    local header checked; data starts are offsets in the file. CorruptInput for a damaged
    archive, a ``data.pkl`` declaring more than ``MAX_PICKLE_BYTES`` and a compressed
    storage record (torch never writes one)."""
    with _open(path, span) as f:
        return _members(f, path, span)[0]


def read_archive(path: Path | str, span: Span | None = None) -> tuple[dict[str, Member], str, bytes]:
    """``members(path, span)``, and the name and bytes of the archive's ``data.pkl``,
    inflated a piece at a time and never past the size it declares: the file opened and its
    directory parsed once."""
    with _open(path, span) as f:
        records, archive = _members(f, path, span)
        name = pickle_member(list(records), where(path, span))
        info = records[name].info
        pieces, total = [], 0
        try:
            with archive, archive.open(info) as data:
                while piece := data.read(_READ_CHUNK):
                    total += len(piece)
                    pieces.append(piece)
        except ZIP_ERRORS as e:
            raise CorruptInput(f"{where(path, span)}: not a readable torch zip pickle ({e})") from None
    if total != info.file_size:
        raise CorruptInput(f"{where(path, span)}: {name} holds {total} bytes, its record says {info.file_size}")
    return records, name, b"".join(pieces)


def _members(f, path: Path | str, span: Span | None) -> tuple[dict[str, Member], zipfile.ZipFile]:
    """``members`` of the open archive ``f``, and ``f`` as a ZipFile (to read records from)."""
    base, name = (span or (0, 0))[0], where(path, span)
    try:
        archive = zipfile.ZipFile(f)
        infos = sorted(archive.infolist(), key=lambda i: i.header_offset)
        ends = [i.header_offset for i in infos[1:]] + [archive.start_dir]
        found = {info.filename: Member(info, base + data_offset(f, info, end)) for info, end in zip(infos, ends)}
    except ZIP_ERRORS as e:
        raise CorruptInput(f"{name}: not a readable torch zip archive ({e})") from None
    for record, (info, _) in found.items():
        if record.endswith("data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise CorruptInput(f"{name}: {record} declares {info.file_size} bytes, too large to be a checkpoint's "
                               f"structure (at most {MAX_PICKLE_BYTES})")
        if "/data/" in record and info.compress_type != zipfile.ZIP_STORED:
            raise CorruptInput(f"{name}: storage record {record} is compressed; torch never writes that")
    return found, archive


def stored_records(path: Path | str) -> dict[int, zipfile.ZipInfo]:
    """Data offset -> ZipInfo of each storage record (``<archive>/data/<key>``) of a torch
    zip file."""
    return {start: info for name, (info, start) in members(path).items() if "/data/" in name}


def pickle_member(names: list[str], path: Path | str) -> str:
    """The ``<archive>/data.pkl`` record among ``names``; CorruptInput if there is none."""
    found = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1] or [n for n in names if n == "data.pkl"]
    if len(found) != 1:
        raise CorruptInput(f"{path}: not a torch zip pickle (no single data.pkl)")
    return found[0]
