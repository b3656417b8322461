"""Small JSON files formats read (indexes, manifests, configs, state files), failing in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import CorruptInput, NotFound


def read_object(path: Path | str) -> dict[str, Any]:
    """The JSON object in ``path``: NotFound if the file is missing, CorruptInput if it is
    not valid UTF-8 JSON (absurd nesting included) or not an object."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NotFound(f"{path}: no such file") from None
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptInput(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CorruptInput(f"{path}: not a JSON object")
    return data
