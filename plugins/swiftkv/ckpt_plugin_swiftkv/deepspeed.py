"""DeepSpeed resume state and run directories of SwiftKV training (ArcticTraining).

ArcticTraining's DeepSpeed output directory is read through ckpt-plugin-deepspeed (the
``latest`` file, tag folders ``epoch_<E>_global_step_<N>``, the model-states pickle with
its numpy and Python RNG states, nothing in it run). What is SwiftKV's stays here: a
student's plan from its module's tensor names, the resume-state summary, and the HF
engine's ``global_step_<N>/`` model directories (the latest is the largest complete one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import ckpt_plugin_deepspeed as ds
from ckpt_core import (Arch, Checkpoint, CkptError, CorruptInput, Detection, NotFound, OptimizerState, RunEntry,
                       TrainState)
from ckpt_core.model import Layout
from ckpt_core.safetensors_io import read_header, read_index
from ckpt_core.tensor import Tensor
from ckpt_core.torchfile import is_zip, scan

import ckpt_plugin_hf as hf

from . import swiftkv
from .config import ordered
from .families import NORM_SWIFTKV, family_of_names

tag_folder = ds.tag_folder
HF_STEP = re.compile(r"global_step_(\d+)")


def detect(path: Path, fmt: str) -> Detection | None:
    """A DeepSpeed directory whose module holds SwiftKV tensors (read off the pickle's
    structure, no tensor data); any other DeepSpeed directory is the deepspeed plugin's."""
    folder = tag_folder(path)
    if folder is None:
        return None
    states = scan(ds.model_states(folder)).obj
    module = states.get("module") if isinstance(states, dict) else None
    if not isinstance(module, dict) or not any(isinstance(n, str) and "swiftkv" in n for n in module):
        return None
    what = f"DeepSpeed output directory, latest tag {folder.name}" if folder != path else f"DeepSpeed tag folder {path.name}"
    return Detection(fmt, 0.9, f"{what}: a SwiftKV student's training resume state", path)


def load_states(folder: Path) -> dict:
    path = ds.model_states(folder)
    states = ds.load(path)
    if not isinstance(states, dict):
        raise CorruptInput(f"{path}: not a DeepSpeed model-states dict")
    return states


def train_state(path: Path, states: dict | None = None) -> TrainState:
    """Where training was: tag, step, epoch, optimizer and scheduler presence, RNG
    states, ZeRO stage and world sizes (weights are not read)."""
    folder = tag_folder(path)
    states = load_states(folder) if states is None else states
    m = ds.TAG.fullmatch(folder.name)
    ds_config = states.get("ds_config") if isinstance(states.get("ds_config"), dict) else {}
    zero = ds_config.get("zero_optimization")
    optim_files = sorted(p.name for p in folder.glob("*optim_states.pt"))
    optimizer = None
    if optim_files or states.get("optimizer") is not None:
        optimizer = OptimizerState(kind="deepspeed", resumable=False, extra={
            "files": optim_files, "state_dict": states.get("optimizer")})
    rng = {key: states[name] for key, name in (("torch", "torch_random_state"), ("numpy", "np_random_state"),
                                                        ("python", "python_random_state")) if name in states}
    step = states.get("global_step", states.get("global_steps"))
    return TrainState(
        step=step if isinstance(step, int) else int(m.group(2)) if m else None,
        epoch=int(m.group(1)) if m and m.group(1) else None,
        optimizer=optimizer,
        scheduler=states.get("lr_scheduler"),
        rng=rng or None,
        config=ds_config,
        extra={
            "tag": folder.name,
            "zero_stage": zero.get("stage") if isinstance(zero, dict) else None,
            "optimizer_present": optimizer is not None,
            "scheduler_present": states.get("lr_scheduler") is not None,
            **{k: states[k] for k in ("global_steps", "global_samples", "skipped_steps", "dp_world_size",
                                               "mp_world_size", "ds_version", "end_of_epoch", "wandb_run_id") if k in states},
        },
    )


def read(path: Path, options: dict[str, Any], families) -> Checkpoint:
    """Weights (the full ``module`` state dict DeepSpeed keeps below ZeRO-3) and train state."""
    folder = tag_folder(path)
    states = load_states(folder)
    module = states.get("module")
    if not isinstance(module, dict) or not module:
        raise NotFound(f"{ds.model_states(folder)}: no module state dict (ZeRO-3 keeps only partitions); its train state "
                       "is still readable, and the HF-engine global_step_N folders hold the weights")
    if not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in module.items()):
        raise CorruptInput(f"{ds.model_states(folder)}: module is not a mapping of names to tensors")
    ties = {}
    if hf.LM_HEAD in module and hf.EMBED in module and _shared(module[hf.LM_HEAD], module[hf.EMBED]):
        ties = dict(hf.TIE)
    tensors = {n: t for n, t in module.items() if n not in ties}
    family = family_of_names(tensors)
    params = families[family].derive_params({n: t.shape for n, t in tensors.items()})
    plan = _plan(tensors, options)
    if plan is not None and plan.variant == "A":
        params.update(num_key_value_layers=plan.num_kv_layers, key_value_group_size=plan.group_size)
    return Checkpoint(
        arch=Arch(family, ordered(params, family)), tensors=tensors, ties=ties,
        kv_sharing=plan.kv_sharing() if plan else {},
        trainable=swiftkv.trainable(tensors) if plan else None,
        train_state=train_state(path, states),
        layout=Layout("swiftkv", "deepspeed", {"tag": folder.name}),
    )


def _shared(a: Tensor, b: Tensor) -> bool:
    """Whether two module entries are one tensor (the same bytes of the file)."""
    return a is b or (a.shape == b.shape and a.file_range is not None and a.file_range == b.file_range)


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
    entries = list(ds.list_run(run_dir) or ())
    tags = {e.path for e in entries}
    for p in sorted(run_dir.iterdir()):
        if (m := HF_STEP.fullmatch(p.name)) and p.is_dir() and p not in tags:
            complete, note = _hf_complete(p)
            entries.append(RunEntry(p, int(m.group(1)), complete, (p,), frozenset(), note))
    return entries or None


def _hf_complete(folder: Path) -> tuple[bool, str]:
    try:
        hf.read_config(folder)
        found = hf.weights(folder)
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
