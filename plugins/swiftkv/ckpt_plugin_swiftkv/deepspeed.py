"""DeepSpeed resume state and run directories of SwiftKV training (ArcticTraining).

A DeepSpeed output directory has a ``latest`` file naming a tag folder
(``epoch_<E>_global_step_<N>`` or ``global_step<N>``) that holds
``mp_rank_00_model_states.pt`` (ZeRO-3: ``zero_pp_rank_<r>_mp_rank_00_model_states.pt``)
and the ZeRO optimizer partitions. The model-states pickle holds numpy and python RNG
states, which plain ``weights_only`` loading refuses, so it is read with an allow-list of
exactly the numpy globals such states need; any other global is refused by name, and
nothing in the file runs. The HF engine instead writes ``global_step_<N>/`` model
directories; the latest is the largest complete one.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ckpt_core import (Arch, Checkpoint, CkptError, CorruptInput, Detection, NotFound, OptimizerState, RunEntry,
                       TrainState, UnsafeInput)
from ckpt_core.model import Layout
from ckpt_core.safetensors_io import read_header, read_index
from ckpt_core.torchfile import from_torch, is_zip, load_pickle, tree_from_torch

from . import hfdir, swiftkv
from .config import EMBED, LM_HEAD, TIE, ordered
from .families import FAMILIES, NORM_SWIFTKV, family_of_names

LATEST = "latest"
MODEL_STATES = "mp_rank_00_model_states.pt"
ZERO3_STATES = "zero_pp_rank_{r}_mp_rank_00_model_states.pt"
TAG = re.compile(r"(?:epoch_(\d+)_)?global_step_?(\d+)")
HF_STEP = re.compile(r"global_step_(\d+)")


def allowed_globals() -> list:
    """What numpy's (and python's) RNG states need to unpickle: arrays, dtypes and scalars,
    under numpy 2's module names and numpy 1's."""
    import numpy as np

    multiarray = np._core.multiarray
    return [
        *((multiarray._reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy._core", "numpy.core")),
        *((multiarray.scalar, f"{m}.multiarray.scalar") for m in ("numpy._core", "numpy.core")),
        (np.ndarray, "numpy.ndarray"),
        (np.dtype, "numpy.dtype"),
        *((type(np.dtype(t)), f"numpy.dtypes.{type(np.dtype(t)).__name__}")
          for t in (np.uint32, np.int64, np.float64, np.float32, np.bool_)),
    ]


def model_states(folder: Path) -> Path | None:
    """The rank-0 model-states file of a tag folder, or None."""
    for name in (MODEL_STATES, ZERO3_STATES.format(r=0)):
        if (folder / name).is_file():
            return folder / name
    return None


def tag_folder(path: Path) -> Path | None:
    """The tag folder ``path`` is, or the one its ``latest`` file names; None if neither."""
    if not path.is_dir():
        return None
    latest = path / LATEST
    if latest.is_file() and latest.stat().st_size < 4096:
        tag = latest.read_text(encoding="utf-8", errors="replace").strip()
        if not tag or tag in (".", "..") or "/" in tag or "\\" in tag or "\0" in tag:
            raise UnsafeInput(f"{latest}: names {tag!r}, which is not a folder name in {path}")
        if model_states(path / tag) is None:
            raise NotFound(f"{latest}: names tag {tag!r}, but {path / tag} has no {MODEL_STATES}")
        return path / tag
    return path if model_states(path) is not None else None


def detect(path: Path, fmt: str) -> Detection | None:
    folder = tag_folder(path)
    if folder is None:
        return None
    what = f"DeepSpeed output directory, latest tag {folder.name}" if folder != path else f"DeepSpeed tag folder {path.name}"
    return Detection(fmt, 0.6, f"{what} ({model_states(folder).name}): SwiftKV training resume state", path)


def load_states(folder: Path) -> dict:
    path = model_states(folder)
    states = load_pickle(path, allowed_globals=allowed_globals())
    if not isinstance(states, dict):
        raise CorruptInput(f"{path}: not a DeepSpeed model-states dict")
    return states


def train_state(path: Path, states: dict | None = None) -> TrainState:
    """Where training was: tag, step, epoch, optimizer and scheduler presence, RNG
    states, ZeRO stage and world sizes (weights are not read)."""
    folder = tag_folder(path)
    states = load_states(folder) if states is None else states
    m = TAG.fullmatch(folder.name)
    ds_config = tree_from_torch(states.get("ds_config")) if isinstance(states.get("ds_config"), dict) else {}
    zero = ds_config.get("zero_optimization")
    optim_files = sorted(p.name for p in folder.glob("*optim_states.pt"))
    optimizer = None
    if optim_files or states.get("optimizer") is not None:
        optimizer = OptimizerState(kind="deepspeed", resumable=False, extra={
            "files": optim_files, "state_dict": tree_from_torch(states.get("optimizer"))})
    rng = {key: tree_from_torch(states[name]) for key, name in (("torch", "torch_random_state"), ("numpy", "np_random_state"),
                                                        ("python", "python_random_state")) if name in states}
    step = states.get("global_step", states.get("global_steps"))
    return TrainState(
        step=step if isinstance(step, int) else int(m.group(2)) if m else None,
        epoch=int(m.group(1)) if m and m.group(1) else None,
        optimizer=optimizer,
        scheduler=tree_from_torch(states.get("lr_scheduler")),
        rng=rng or None,
        config=ds_config,
        extra={
            "tag": folder.name,
            "zero_stage": zero.get("stage") if isinstance(zero, dict) else None,
            "optimizer_present": optimizer is not None,
            "scheduler_present": states.get("lr_scheduler") is not None,
            **{k: tree_from_torch(states[k]) for k in ("global_steps", "global_samples", "skipped_steps", "dp_world_size",
                                               "mp_world_size", "ds_version", "end_of_epoch", "wandb_run_id") if k in states},
        },
    )


def read(path: Path, options: dict[str, Any]) -> Checkpoint:
    """Weights (the full ``module`` state dict DeepSpeed keeps below ZeRO-3) and train state."""
    folder = tag_folder(path)
    states = load_states(folder)
    module = states.get("module")
    if not isinstance(module, dict) or not module:
        raise NotFound(f"{model_states(folder)}: no module state dict (ZeRO-3 keeps only partitions); its train state "
                       "is still readable, and the HF-engine global_step_N folders hold the weights")
    import torch

    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in module.items()):
        raise CorruptInput(f"{model_states(folder)}: module is not a mapping of names to tensors")
    ties = {}
    if LM_HEAD in module and EMBED in module and _shared(module[LM_HEAD], module[EMBED]):
        ties = dict(TIE)
    tensors = {n: from_torch(t) for n, t in module.items() if n not in ties}
    family = family_of_names(tensors)
    params = FAMILIES[family].derive_params({n: t.shape for n, t in tensors.items()})
    plan = _plan(tensors, options)
    if plan is not None and plan.variant == "A":
        params.update(num_key_value_layers=plan.num_kv_layers, key_value_group_size=plan.group_size)
    return Checkpoint(
        arch=Arch(family, ordered(params)), tensors=tensors, ties=ties,
        kv_sharing=plan.kv_sharing() if plan else {},
        trainable=swiftkv.trainable(tensors) if plan else None,
        train_state=train_state(path, states),
        layout=Layout("swiftkv", "deepspeed", {"tag": folder.name}),
    )


def _shared(a, b) -> bool:
    return a.shape == b.shape and a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _plan(tensors: dict, options: dict[str, Any]) -> swiftkv.Plan | None:
    """A student's plan from its tensor names (no config.json here): variant A's layers
    from its tensors, variant B's map from ``kv_sharing_map`` (checked against them)."""
    query = sorted(int(m.group(1)) for n in tensors if n.endswith("q_proj_swiftkv.weight") and (m := swiftkv.LAYER.match(n)))
    if not query:
        return None
    n_layer = swiftkv.n_layer_of(tensors)
    asked = swiftkv.from_options(options, n_layer)
    if NORM_SWIFTKV in tensors:
        leaders = sorted(int(m.group(1)) for n in tensors if n.endswith("k_proj_swiftkv.weight") and (m := swiftkv.LAYER.match(n)))
        g = leaders[1] - leaders[0] if len(leaders) > 1 else n_layer - query[0]
        plan = swiftkv.Plan("A", n_layer, query[0], g)
    else:
        kv_map = asked.kv_map if asked is not None and asked.variant == "B" else {}
        plan = swiftkv.Plan("B", n_layer, kv_map=kv_map, mlp=any("mlp." in n and "swiftkv" in n for n in tensors),
                            layernorm=any("layernorm_swiftkv" in n for n in tensors))
        if not kv_map:
            return plan  # the map is not stored here: writing a student asks for it
    if asked is not None:
        swiftkv.check_matches(plan, asked)
    swiftkv.check_structure(plan, tensors, "DeepSpeed module state dict")
    return plan


# -- run directories -------------------------------------------------------------------


def list_run(run_dir: Path) -> list[RunEntry] | None:
    """HF-engine ``global_step_<N>/`` model folders and DeepSpeed tag folders; None if none."""
    entries = []
    latest_tag = None
    if (run_dir / LATEST).is_file():
        latest_tag = (run_dir / LATEST).read_text(encoding="utf-8", errors="replace").strip()
    for p in sorted(run_dir.iterdir()):
        if not p.is_dir():
            continue
        if m := HF_STEP.fullmatch(p.name):
            complete, note = _hf_complete(p)
        elif (m := TAG.fullmatch(p.name)) and (latest_tag is not None or model_states(p) is not None):
            complete, note = _tag_complete(p)
        else:
            continue
        tags = frozenset({"latest"}) if p.name == latest_tag else frozenset()
        entries.append(RunEntry(p, int(m.group(m.lastindex)), complete, (p,), tags, note))
    return entries or None


def _hf_complete(folder: Path) -> tuple[bool, str]:
    try:
        hfdir.read_config(folder)
        found = hfdir.weights(folder)
        if found is None:
            return False, "no weight files"
        kind, path = found
        files = sorted(set(read_index(path)[0].values())) if path.name.endswith(".json") else [path]
        for f in files:
            if kind == "safetensors":
                read_header(f)
            elif not is_zip(f):
                return False, f"{f.name} is not a whole torch file"
    except CkptError as e:
        return False, str(e)
    return True, ""


def _tag_complete(folder: Path) -> tuple[bool, str]:
    states = model_states(folder)
    if states is None:
        return False, f"no {MODEL_STATES}"
    if not is_zip(states):
        return False, f"{states.name} is not a whole torch file (interrupted save?)"
    return True, ""
