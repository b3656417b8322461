"""Training state of a moshi checkpoint: step, optimizer state and the run's config.

``optimizer_state.pt`` is ``{"optimizer": optimizer.state_dict(), "step": int}``, read with
``weights_only=True``. The optimizer numbers its parameters by position in the model and
the files do not name them, so the state stays keyed by position (``"0"``, ``"1"``, ...):
exact and resumable into the same model. The run config is ``training_config.json``
(TTT variant) and, in a run directory, ``args.yaml``: ``config["training_config"]`` and
``config["args"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_core import CorruptInput, LossyConversion, OptimizerState, TrainState, files, jsonfile, torchfile

from . import layout


def read_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.safe_load(files.read_text(path, jsonfile.MAX_BYTES))
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptInput(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None


DEFAULT_KEEP = 3  # moshi-finetune's TrainArgs default for num_ckpt_keep


def retention(run_dir: Path) -> int | None:
    """``num_ckpt_keep`` from the run's ``args.yaml`` (moshi-finetune's default, 3, where it is
    left out); None without ``args.yaml`` or with ``num_ckpt_keep: null`` (keep them all)."""
    path = run_dir / layout.ARGS
    if not path.is_file():
        return None
    args = read_yaml(path)
    keep = args.get("num_ckpt_keep", DEFAULT_KEEP) if isinstance(args, dict) else DEFAULT_KEEP
    if keep is None:
        return None
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise CorruptInput(f"{path}: num_ckpt_keep is {keep!r}, not a positive number of checkpoints")
    return keep


def read_optimizer(path: Path) -> tuple[OptimizerState, int | None]:
    """The optimizer state in ``optimizer_state.pt`` and the step it records."""
    data = torchfile.load(path)
    opt = data.get("optimizer") if isinstance(data, dict) else None
    if not (isinstance(opt, dict) and isinstance(opt.get("state"), dict) and isinstance(opt.get("param_groups"), list)):
        raise CorruptInput(f"{path}: expected {{'optimizer': {{'state', 'param_groups'}}, 'step'}}")
    slots = {str(k): v for k, v in opt["state"].items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [str(p) for p in g.get("params", [])]}
              for g in opt["param_groups"]]
    kind = "adamw" if any("exp_avg_sq" in s for s in slots.values()) else ""
    others = {k: v for k, v in data.items() if k not in ("optimizer", "step")}
    step = data.get("step")
    return OptimizerState(kind=kind, param_state=slots, groups=groups, extra=others), step if isinstance(step, int) else None


def write_optimizer(path: Path, opt: OptimizerState, step: int) -> None:
    """Write ``optimizer_state.pt`` as the TTT fine-tuning code does."""
    positions: dict[str, int] = {}
    for name in [*(p for g in opt.groups for p in g.get("params", [])), *opt.param_state]:
        positions.setdefault(name, int(name) if name.isdigit() else len(positions))
    state = {positions[n]: s for n, s in opt.param_state.items()}
    groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [positions[p] for p in g.get("params", [])]}
              for g in opt.groups]
    torchfile.save({"optimizer": {"state": state, "param_groups": groups}, "step": step, **opt.extra}, path)


def read(consolidated: Path, folder_step: int | None, run_dir: Path | None) -> TrainState | None:
    """The training state of a checkpoint, without its weights (None when it has none)."""
    config = {}
    if run_dir is not None and (run_dir / layout.ARGS).is_file():
        config["args"] = read_yaml(run_dir / layout.ARGS)
    if (consolidated / layout.TRAINING_CONFIG).is_file():
        config["training_config"] = jsonfile.read_object(consolidated / layout.TRAINING_CONFIG)
    optimizer, opt_step, extra = None, None, {}
    if (consolidated / layout.OPTIMIZER).is_file():
        optimizer, opt_step = read_optimizer(consolidated / layout.OPTIMIZER)
    step = folder_step if folder_step is not None else opt_step
    if opt_step is not None and opt_step != step:
        extra["optimizer_state_step"] = opt_step
    if step is None and optimizer is None and not config:
        return None
    return TrainState(step=step, optimizer=optimizer, config=config, extra=extra)


def check_holdable(ts: TrainState) -> None:
    """LossyConversion for training state a moshi checkpoint has no place for."""
    # an empty value (rng b"", scheduler {}) would read back as None: a change too
    lost = [f for f in ("epoch", "best_metric", "scheduler", "rng", "data_position") if getattr(ts, f) is not None]
    lost += ["metrics"] * bool(ts.metrics)
    lost += [f"config[{k!r}]" for k in ts.config if k not in ("args", "training_config")]
    lost += [f"extra[{k!r}]" for k in ts.extra if k != "optimizer_state_step"]
    if ts.optimizer is not None and not ts.optimizer.resumable:
        lost.append("a non-resumable optimizer state")
    if ts.optimizer is not None:
        opt = ts.optimizer
        named = [n for n in [*opt.param_state, *(p for g in opt.groups for p in g.get("params", []))] if not str(n).isdigit()]
        if named:  # optimizer_state.pt numbers parameters by position: the names would be lost
            lost.append(f"the optimizer state's parameter names ({named[0]!r}{', ...' if len(named) > 1 else ''})")
    if lost:
        raise LossyConversion(f"a moshi checkpoint keeps step, optimizer state and run config only; it would lose {', '.join(lost)} "
                              "(convert to canonical instead, or --option init_state=true for weights only). Nothing was written.")
