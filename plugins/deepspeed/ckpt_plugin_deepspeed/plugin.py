"""The ckpt-core hooks of ckpt-plugin-deepspeed: format ``deepspeed``.

A DeepSpeed save directory (its ``latest`` tag) or a tag folder, ZeRO stage 0 to 3 at any
data-parallel world size, read as any model family: names are kept as the module has
them and the family is recognised through the installed schemas.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ckpt_core import hookimpl
from ckpt_core.errors import CkptError
from ckpt_core.model import Detection, FormatSpec
from ckpt_core.schema import FamilySchema

from . import folder, reader, writer

SPEC = FormatSpec(
    name=reader.NAME,
    description="a DeepSpeed ZeRO 0/1/2/3 save directory (latest -> tag) or tag folder, any world size",
    capabilities=frozenset({"ties", "train_state", "optimizer_state", "trainable"}),
    patterns=("latest", "*/mp_rank_00_model_states.pt", "*/zero_pp_rank_*_mp_rank_00_model_states.pt",
              "*/[bf16_]zero_pp_rank_*_mp_rank_00_optim_states.pt"),
    options={"weights": "fp32 (default: the master weights, as zero_to_fp32.py gives them) or module (the module's own "
                        "dtype; ZeRO 0/1/2 only)",
             "params": "hyper-parameters the tensors cannot show, merged over the recognised ones, as "
                       "{'n_head': 32, 'n_kv_head': 8} (DeepSpeed keeps no model config; --to hf needs the heads)",
             "world_size": "writing: the data-parallel world size to partition for (default: the source's, or 1)",
             "stage": "writing: ZeRO stage 1, 2 or 3 (default: the source's, or 2)",
             "dtype": "writing: the training dtype of the module weights, fp32, bf16 or fp16 (default: the source's)",
             "universal": "writing: true for DeepSpeed's universal layout (zero/<param>/fp32.pt ...), which its engine "
                          "loads at any world size with \"checkpoint\": {\"load_universal\": true}",
             "optimizer": "writing a checkpoint without optimizer state: fresh (zero Adam moments, step 0, torch's AdamW "
                          "hyper-parameters) or a mapping of AdamW hyper-parameters ({lr: 0.01, weight_decay: 0.1})"},
    run_dirs=True,
    writes_any=False,
    write_options=({"optimizer": "fresh", "stage": 3}, {"optimizer": "fresh", "universal": True}),
)


@hookimpl
def ckpt_formats():
    return [SPEC]


@hookimpl
def detect(path: Path):
    try:
        tag = folder.tag_folder(path)
    except (CkptError, OSError, ValueError):
        return None
    if tag is None:
        return None
    ranks = len(folder.rank_files(tag, "optim"))
    what = f"DeepSpeed save directory, latest tag {tag.name}" if tag != path else f"DeepSpeed tag folder {tag.name}"
    return Detection(reader.NAME, 0.8, f"{what} ({folder.model_states(tag).name}, {ranks} optimizer partition files)", path)


@hookimpl
def to_canonical(path: Path, format: str, options: dict[str, Any], families: Mapping[str, FamilySchema]):
    if format != reader.NAME:
        return None
    return reader.read(path, options, families)


@hookimpl
def from_canonical(checkpoint, path: Path, format: str, options: dict[str, Any]):
    if format != reader.NAME:
        return None
    writer.write(checkpoint, path, options)
    return True


@hookimpl
def train_state(path: Path, format: str):
    if format != reader.NAME:
        return None
    return reader.train_state(reader.open_tag(path))


@hookimpl
def list_checkpoints(run_dir: Path, format: str):
    if format != reader.NAME:
        return None
    return folder.list_run(run_dir)
