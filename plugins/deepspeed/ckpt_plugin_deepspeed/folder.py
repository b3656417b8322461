"""Where DeepSpeed puts things: save directories, tag folders, one file per rank.

    save_dir/
      latest                        the tag of the newest save, e.g. "global_step2"
      global_step2/                 a tag folder (ArcticTraining: epoch_E_global_step_N)
        mp_rank_00_model_states.pt                         ZeRO 0/1/2: the module, run state
        zero_pp_rank_{r}_mp_rank_00_model_states.pt        ZeRO-3: one per data-parallel rank
        [bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt one per rank: its fp32 partition

A tag folder is complete when every rank's files are there (as many optimizer files as the
model states' ``dp_world_size``) and are whole zip files; an interrupted save is listed as
incomplete, never chosen as latest, never pruned. Checkpoints are ordered by the step their
tag names; the tag ``latest`` names is marked, and prune spares it (DeepSpeed resumes from it).
"""

from __future__ import annotations

import re
from pathlib import Path

from ckpt_core.errors import CorruptInput, NotFound, UnsafeInput
from ckpt_core.model import RunEntry
from ckpt_core.torchfile import is_zip, scan

LATEST = "latest"
MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_STATES = "zero_pp_rank_{r}_mp_rank_00_model_states.pt"
RANK_FILE = re.compile(r"(bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_(optim|model)_states\.pt")
TAG = re.compile(r"(?:epoch_(\d+)_)?global_step_?(\d+)")


def model_states(folder: Path) -> Path | None:
    """The rank-0 model-states file of a tag folder, or None."""
    for name in (MODEL_STATES, ZERO3_STATES.format(r=0)):
        if (folder / name).is_file():
            return folder / name
    return None


def latest_tag(save_dir: Path) -> str | None:
    """The tag ``save_dir/latest`` names (None without that file); UnsafeInput for a tag
    that is not a plain folder name."""
    latest = save_dir / LATEST
    if not latest.is_file() or latest.stat().st_size >= 4096:
        return None
    tag = latest.read_text(encoding="utf-8", errors="replace").strip()
    if not tag or tag in (".", "..") or "/" in tag or "\\" in tag or "\0" in tag:
        raise UnsafeInput(f"{latest}: names {tag!r}, which is not a folder name in {save_dir}")
    return tag


def tag_folder(path: Path) -> Path | None:
    """The tag folder ``path`` is, or the one its ``latest`` file names; None if neither."""
    if not path.is_dir():
        return None
    tag = latest_tag(path)
    if tag is not None:
        if model_states(path / tag) is None:
            raise NotFound(f"{path / LATEST}: names tag {tag!r}, but {path / tag} has no {MODEL_STATES}")
        return path / tag
    return path if model_states(path) is not None else None


def rank_files(folder: Path, kind: str) -> dict[int, Path]:
    """Data-parallel rank -> its ``kind`` (``optim`` or ``model``) states file, tensor-parallel rank 0."""
    found = {}
    for p in folder.iterdir():
        m = RANK_FILE.fullmatch(p.name)
        if m and m.group(4) == kind and int(m.group(3)) == 0:
            found[int(m.group(2))] = p
    return dict(sorted(found.items()))


def step_of(tag: str) -> tuple[int | None, int | None]:
    """(step, epoch) a tag names, as far as it names them."""
    m = TAG.fullmatch(tag)
    if m is None:
        return None, None
    return int(m.group(2)), int(m.group(1)) if m.group(1) else None


# -- run directories -------------------------------------------------------------------


def list_run(save_dir: Path) -> list[RunEntry] | None:
    """The tag folders of a save directory, by the step their name gives; None if it has none.
    ``latest`` names one of them (tagged, not trusted for the order)."""
    tags = [(p, step) for p in sorted(save_dir.iterdir()) if (step := step_of(p.name)[0]) is not None and p.is_dir()
            and (model_states(p) is not None or rank_files(p, "optim"))]
    if not tags:
        return None
    latest = latest_tag(save_dir)
    entries = []
    for p, step in tags:
        complete, note = completeness(p)
        entries.append(RunEntry(p, step, complete, (p,), frozenset({"latest"}) if p.name == latest else frozenset(), note))
    return entries


def completeness(folder: Path) -> tuple[bool, str]:
    """Whether a tag folder holds every rank's files, whole; if not, why."""
    states = model_states(folder)
    if states is None:
        return False, f"no {MODEL_STATES}"
    if not is_zip(states):
        return False, f"{states.name} is not a whole torch file (interrupted save?)"
    optim = rank_files(folder, "optim")
    try:
        world = scan(states).obj.get("dp_world_size")  # the pickle's structure only, no tensor data
    except (CorruptInput, AttributeError):
        return False, f"{states.name} is damaged"
    if type(world) is int and optim and sorted(optim) != list(range(world)):
        missing = sorted(set(range(world)) - set(optim))
        return False, (f"no optimizer file for rank {missing[0]} of {world} (interrupted save?)" if missing
                       else f"{len(optim)} optimizer files for a world size of {world}")
    files = [states, *optim.values()]
    if states.name != MODEL_STATES:
        model = rank_files(folder, "model")
        files += list(model.values())
        if optim and sorted(model) != sorted(optim):
            return False, f"model-states files for ranks {sorted(model)}, optimizer files for ranks {sorted(optim)}"
    if optim and sorted(optim) != list(range(len(optim))):
        missing = sorted(set(range(max(optim) + 1)) - set(optim))
        return False, f"no optimizer file for rank {missing[0]} (interrupted save?)"
    for f in files:
        if not is_zip(f):
            return False, f"{f.name} is not a whole torch file (interrupted save?)"
    return True, ""
