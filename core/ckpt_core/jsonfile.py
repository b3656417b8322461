"""Small JSON files formats read (indexes, manifests, configs, state files), failing in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CorruptInput, NotFound
from .files import open_regular

# Far above any real index, manifest or config (a 1000-shard index is a few MB); a bound
# so that a file linked to /dev/zero, or a huge one posing as JSON, fails instead of eating memory.
MAX_BYTES = 64 * 1024 * 1024


def read_object(path: Path | str) -> dict[str, Any]:
    """The JSON object in ``path``: NotFound if the file is missing, CorruptInput if it is
    not valid UTF-8 JSON (absurd nesting included), not an object, over ``MAX_BYTES``, or not
    a regular file (a FIFO would block the read forever)."""
    path = Path(path)
    try:
        with open_regular(path) as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise CorruptInput(f"{path}: over {MAX_BYTES // 2**20} MiB, too large for a JSON file a checkpoint keeps")
        data = json.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptInput(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptInput(f"{path}: not a JSON object")
    return data
