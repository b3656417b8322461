#!/usr/bin/env python
"""Speed and memory of `ckpt-core convert`, `detect` and `inspect` across formats, against `cp`
and against the naive load-everything path, at several checkpoint sizes.

Run by hand, never by CI (pytest does not collect it: bench/ is outside testpaths):

    python bench/bench_formats.py                         # 100MB and 1GB, temp dir under /work
    python bench/bench_formats.py --size 4GB --repeat 3   # needs ~8 x 4 GB of disk, minutes
    python bench/bench_formats.py --size 100MB --cases mlx,detect --json out.json

Per size it generates, in a temp dir (deleted at the end unless --keep):

  nanogpt    out/ckpt.pt: nanoGPT's checkpoint dict, written by torch.save (model with
             torch.compile's `_orig_mod.` keys and lm_head tied to wte, AdamW state_dict
             with its two param groups and no per-parameter state, model_args, iter_num,
             best_val_loss, config), BF16, bias=False, 4096 wide (narrower when one layer
             and the embeddings do not fit the size), as many layers as fit
  canonical  canonical/: ckpt-core convert of ckpt.pt
  mlx        mlx-run/: MLX run directory (step_005000.safetensors + state), from canonical/
  modded     logs/run/state_step005000.pt: modded-nanogpt qkv layout, converted from ckpt.pt
             (the modded-gpt family: wpe and LayerNorm weights dropped)
  moshi      moshi/consolidated/: consolidated.safetensors + config.json of moshi's LMModel
             (shapes from moshi itself on the meta device: the 7B config with as many
             layers as fit; at 1 GB the width is 2048, at 100 MB 256)
  moshi-canonical  moshi-canonical/: ckpt-core convert of moshi/consolidated/
  hf         gpt2-hf/: a Hugging Face GPT-2 directory (Conv1D weights [in, out], zero biases
             for bias=False), ckpt-core convert of canonical/
  hf-llama   hf-llama/: a Hugging Face Llama directory (benchlib.llama_shapes: Llama-2-7B's
             proportions, 4096 wide at 1 GB, as many layers as fit), config.json beside
  mlx-lm     mlx-lm/: ckpt-core convert of hf-llama/ (an mlx-lm model directory)
  mlx-lm-q4  mlx-lm-q4/: mlx-lm's own 4-bit quantization of mlx-lm/ (load_model,
             quantize_model with group size 64, save_model, save_config), about a quarter
             of the size; its "largest tensor" is its largest one unpacked

and checks that `ckpt-core detect` names each one's format. Then it times, each in its own
process (wall from the parent, peak RSS from wait4's rusage; medians of --repeat runs,
round robin so that disk drift spreads over every case):

  cp, cp+sync     `cp -r` of each source, then with the copy fsync-ed (ckpt-core fsyncs
                  what it writes, so cp+sync is the fair baseline; targets use it)
  rename-only     canonical -> mlx, mlx -> canonical, moshi -> canonical, canonical -> moshi,
                  and moshi -> canonical in 100 MB shards with --workers 1 and 2 (parallel I/O)
  layout change   nanogpt -> modded-nanogpt (drop_unmapped), modded-nanogpt -> nanogpt
                  (fill_missing), nanogpt -> mlx, mlx -> nanogpt, nanogpt -> hf (GPT-2:
                  four transposes per layer, training state dropped), hf -> nanogpt
  rename-only     hf-llama -> mlx-lm, mlx-lm -> hf
  computed        mlx-lm-q4 -> hf with dequantize=true (every packed weight unpacked):
                  its naive path is mlx-lm's own (load_model, dequantize_model, save_model,
                  as `mlx_lm.convert --dequantize` does); no wall target against cp
  naive           per conversion, what a user's script does: load everything
                  (safetensors.torch.load_file, or torch.load), rename the keys, save
                  (save_file, dropping tied duplicates it refuses, or torch.save). It only
                  renames, never splits or fuses, so it flatters the naive side of layout changes
  naive+sync      the same, then fsync of what it wrote (ckpt-core's writes are durable; a
                  naive save that never syncs leaves gigabytes in the page cache). Printed
                  beside naive; the verdicts use plain naive, as the issue defines it
  detect, inspect `ckpt-core detect` / `ckpt-core inspect` of every source

Every ckpt-core run is the installed `ckpt-core` console script with every installed plugin,
as a user runs it: start-up and imports count. Nothing is dropped from the page cache (that
needs root and measures the disk, not the code): each source is read once before the runs.

Targets (issue 8): rename-only wall <= 1.25 x cp+sync and peak RSS <= 1.2 x largest tensor
+ 150 MB; layout change wall <= 2 x cp+sync and peak RSS <= 2 x largest tensor + 300 MB
(computed: the same RSS target);
every conversion >= 3x less peak RSS and >= 1.5x faster than its naive path; detect and
inspect time independent of size (largest size within 1.5 x the smallest).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import ClassVar

import benchlib as bl

MB = bl.MB
STEP = 5000


def make_nanogpt(path: Path, size: int) -> None:
    """nanoGPT's ``out/ckpt.pt`` for a model of about ``size`` BF16 bytes, as train.py
    writes it (compile=True, so the model's keys carry ``_orig_mod.``)."""
    import torch

    d, shapes = bl.gpt_shapes(size)
    model = {"_orig_mod." + k: torch.from_numpy(bl.bf16_words(s, i * 7919)).view(torch.bfloat16)
             for i, (k, s) in enumerate(shapes.items())}
    model["_orig_mod.lm_head.weight"] = model["_orig_mod.transformer.wte.weight"]  # weight tying
    n_layer = sum(k.endswith("attn.c_attn.weight") for k in shapes)
    params = [k for k in model if not k.endswith("lm_head.weight")]  # named_parameters() skips the tied head
    decay = [i for i, k in enumerate(params) if model[k].dim() >= 2]
    nodecay = [i for i, k in enumerate(params) if model[k].dim() < 2]
    group = dict(lr=6e-4, betas=(0.9, 0.95), eps=1e-8, amsgrad=False, foreach=None, maximize=False,
                 capturable=False, differentiable=False, fused=None)
    checkpoint = {
        "model": model,
        "optimizer": {"state": {}, "param_groups": [dict(group, weight_decay=0.1, params=decay),
                                                    dict(group, weight_decay=0.0, params=nodecay)]},
        "model_args": dict(n_layer=n_layer, n_head=max(d // 128, 1), n_embd=d, block_size=bl.BLOCK, bias=False,
                           vocab_size=bl.VOCAB, dropout=0.0),
        "iter_num": STEP,
        "best_val_loss": torch.tensor(3.25),
        "config": {"out_dir": "out", "init_from": "scratch", "dataset": "openwebtext", "batch_size": 12,
                   "block_size": bl.BLOCK, "n_layer": n_layer, "n_embd": d, "bias": False, "learning_rate": 6e-4,
                   "max_iters": 600000, "weight_decay": 0.1, "dtype": "bfloat16", "compile": True},
    }
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)


def make_moshi(folder: Path, size: int) -> dict:
    """A moshi ``consolidated/`` folder of about ``size`` BF16 bytes (keys sorted, no
    safetensors metadata, as moshi's fine-tuning code writes it); returns its config."""
    cfg, shapes = bl.moshi_config(size)
    folder.mkdir(parents=True)
    bl.write_safetensors(folder / "consolidated.safetensors", shapes, None)
    (folder / "config.json").write_text(json.dumps({**cfg, "lora": False, "lora_rank": 64, "lora_scaling": 2.0}, indent=4))
    return cfg


def make_hf(folder: Path, size: int) -> None:
    """A Hugging Face Llama directory of about ``size`` BF16 bytes: model.safetensors and config.json."""
    config, shapes = bl.llama_shapes(size)
    folder.mkdir(parents=True)
    bl.write_safetensors(folder / "model.safetensors", shapes, {"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config, indent=2))


MLX_QUANTIZE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model
    model, config = load_model(Path(sys.argv[1]))
    model, config = quantize_model(model, config, 64, 4)
    save_model(Path(sys.argv[2]), model)
    save_config(config, Path(sys.argv[2]) / "config.json")
""")

# mlx-lm's own dequantizing (what `mlx_lm.convert --dequantize` does, without the tokenizer)
NAIVE_MLX = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mlx_lm.utils import dequantize_model, load_model, save_config, save_model
    model, config = load_model(Path(sys.argv[1]))
    model = dequantize_model(model)
    config.pop("quantization", None)
    config.pop("quantization_config", None)
    save_model(Path(sys.argv[2]), model)
    save_config(config, Path(sys.argv[2]) / "config.json")
""")


def largest_tensor(cli: str, path: Path, *options: str) -> int:
    """Bytes of the largest tensor of a checkpoint, from `ckpt-core inspect --json`."""
    facts = json.loads(subprocess.run([cli, "inspect", str(path), "--json", *options], check=True, capture_output=True,
                                      text=True).stdout)
    return max(t["bytes"] for t in facts["tensors"])


class Sources:
    """The checkpoints of one size, their formats and largest tensors."""

    FORMATS: ClassVar[dict[str, str]] = {"nanogpt": "nanogpt", "canonical": "canonical", "mlx": "mlx",
                                         "modded": "modded-nanogpt", "moshi": "moshi", "moshi-canonical": "canonical",
                                         "hf": "hf", "hf-llama": "hf", "mlx-lm": "mlx-lm", "mlx-lm-q4": "mlx-lm"}

    def __init__(self, root: Path, size: int, cli: str, env: dict[str, str]):
        self.root, self.cli, self.env = root, cli, env
        self.paths = {"nanogpt": root / "out" / "ckpt.pt", "canonical": root / "canonical", "mlx": root / "mlx-run",
                      "modded": root / "logs" / "run" / f"state_step{STEP:06d}.pt",
                      "moshi": root / "moshi" / "consolidated", "moshi-canonical": root / "moshi-canonical",
                      "hf": root / "gpt2-hf", "hf-llama": root / "hf-llama", "mlx-lm": root / "mlx-lm",
                      "mlx-lm-q4": root / "mlx-lm-q4"}
        t0 = time.perf_counter()
        make_nanogpt(self.paths["nanogpt"], size)
        self.convert("nanogpt", "canonical", "canonical")
        self.convert("canonical", "mlx", "mlx")
        self.paths["modded"].parent.mkdir(parents=True)
        self.convert("nanogpt", "modded", "modded-nanogpt", "-o", "drop_unmapped=true")
        self.moshi_config = make_moshi(self.paths["moshi"], size)
        self.convert("moshi", "moshi-canonical", "canonical")
        self.convert("canonical", "hf", "hf", "--allow-loss", "train_state")
        make_hf(self.paths["hf-llama"], size)
        self.convert("hf-llama", "mlx-lm", "mlx-lm")
        subprocess.run([sys.executable, "-c", MLX_QUANTIZE, str(self.paths["mlx-lm"]), str(self.paths["mlx-lm-q4"])],
                       check=True, capture_output=True)
        self.made = time.perf_counter() - t0
        for name, path in self.paths.items():
            found = json.loads(subprocess.run([cli, "detect", str(path), "--json"], check=True, capture_output=True,
                                              text=True).stdout)["detections"][0]["format"]
            if found != self.FORMATS[name]:
                raise SystemExit(f"{path} is detected as {found}, not {self.FORMATS[name]}")
            bl.warm(path)
        self.size = {name: bl.tree_size(path) for name, path in self.paths.items()}
        self.largest = {name: largest_tensor(cli, path) for name, path in self.paths.items()}
        self.largest["mlx-lm-q4"] = largest_tensor(cli, self.paths["mlx-lm-q4"], "-o", "dequantize=true")

    def convert(self, src: str, dst: str, fmt: str, *options: str) -> None:
        argv = [self.cli, "convert", str(self.paths[src]), str(self.paths[dst]), "--to", fmt, "--quiet", *options]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"generating {dst} failed: {' '.join(argv)}\n{done.stderr}")

    def weights(self, name: str) -> list[Path]:
        """The files a naive script loads: the safetensors weights, or the pickle."""
        path = self.paths[name]
        if path.is_file():
            return [path]
        return sorted(p for p in path.glob("*.safetensors") if not p.name.endswith(("_optimizer.safetensors", "state.safetensors")))


NAIVE = textwrap.dedent("""
    import json, os, sys
    import torch
    from safetensors.torch import load_file, save_file
    srcs, dst, save_as, durable = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "sync"
    if srcs[0].endswith(".pt"):
        ck = torch.load(srcs[0], map_location="cpu")             # everything in memory
        sd = ck["model"]
    else:
        ck, sd = {}, {}
        for src in srcs:
            sd.update(load_file(src))                              # everything in memory
    sd = {k.removeprefix("_orig_mod.").replace("transformer.", "model.", 1): v for k, v in sd.items()}
    if save_as == "pt":
        torch.save({**ck, "model": sd}, dst)
    else:
        seen, out = set(), {}
        for k, v in sd.items():                                    # save_file refuses shared storage
            if v.untyped_storage().data_ptr() not in seen:
                seen.add(v.untyped_storage().data_ptr())
                out[k] = v
        save_file(out, dst, metadata={"format": "pt"})
    if durable:                                                    # on disk, as ckpt-core leaves it
        fd = os.open(dst, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
""")

# name, group, source, target format, destination name, options, naive save format
CONVERSIONS = [
    ("canonical->mlx", "rename", "canonical", "mlx", "mlx-out", (), "st"),
    ("mlx->canonical", "rename", "mlx", "canonical", "canonical-out", (), "st"),
    ("moshi->canonical", "rename", "moshi", "canonical", "canonical-out", (), "st"),
    ("canonical->moshi", "rename", "moshi-canonical", "moshi", "moshi-out", (), "st"),
    # a multi-shard write (about ten 100 MB shards), one shard at a time and two at once (``--workers``)
    ("moshi->canonical 100MB w1", "rename", "moshi", "canonical", "canonical-out",
     ("-o", "max_shard_size=100MB", "--workers", "1"), "st"),
    ("moshi->canonical 100MB w2", "rename", "moshi", "canonical", "canonical-out",
     ("-o", "max_shard_size=100MB", "--workers", "2"), "st"),
    ("nanogpt->modded", "layout", "nanogpt", "modded-nanogpt", "state_step005000.pt", ("-o", "drop_unmapped=true"), "pt"),
    ("modded->nanogpt", "layout", "modded", "nanogpt", "ckpt.pt",
     ("-o", "fill_missing=true", "-o", f"block_size={bl.BLOCK}"), "pt"),
    ("nanogpt->mlx", "layout", "nanogpt", "mlx", "mlx-out", (), "st"),
    ("mlx->nanogpt", "layout", "mlx", "nanogpt", "ckpt.pt", (), "pt"),
    ("nanogpt->hf", "layout", "nanogpt", "hf", "hf-out", ("--allow-loss", "train_state"), "st"),
    ("hf->nanogpt", "layout", "hf", "nanogpt", "ckpt.pt", (), "pt"),
    ("hf-llama->mlx-lm", "rename", "hf-llama", "mlx-lm", "mlx-lm-out", (), "st"),
    ("mlx-lm->hf", "rename", "mlx-lm", "hf", "hf-out", (), "st"),
    ("mlx-lm-q4->hf", "computed", "mlx-lm-q4", "hf", "hf-out", ("-o", "dequantize=true"), "mlx"),
]
# wall x cp+sync (None: no wall target), RSS x largest + slack
TARGETS = {"rename": (1.25, 1.2, 150 * MB), "layout": (2.0, 2.0, 300 * MB), "computed": (None, 2.0, 300 * MB)}
VERDICT_GROUPS = tuple(TARGETS)
NAIVE_RSS, NAIVE_WALL, FLAT = 3.0, 1.5, 1.5


def plan(src: Sources, out: Path, cli: str, wanted) -> list[dict]:
    """Every case of one size: name, group, argv, source, and the naive case it is held against."""
    cases = []
    for s in sorted({c[2] for c in CONVERSIONS if wanted(c[0])}):  # the baselines of the conversions
        p = str(src.paths[s])
        cases.append({"name": f"cp {s}", "group": "cp", "source": s, "argv": ["cp", "-r", p, str(out)]})
        cases.append({"name": f"cp+sync {s}", "group": "cp+sync", "source": s,
                      "argv": ["sh", "-c", 'cp -r "$0" "$1" && find "$1" -type f -exec sync {} +', p, str(out)]})
    for name, group, s, fmt, dst, options, save_as in CONVERSIONS:
        if not wanted(name):
            continue
        cases.append({"name": name, "group": group, "source": s, "naive": f"naive {name}",
                      "argv": [cli, "convert", str(src.paths[s]), str(out / dst), "--to", fmt, "--quiet", *options]})
        if save_as == "mlx":  # mlx-lm's own path, which saves durably itself (mx.save_safetensors closes, no fsync)
            cases.append({"name": f"naive {name}", "group": "naive", "source": s,
                          "argv": [sys.executable, "-c", NAIVE_MLX, str(src.paths[s]), str(out / dst)]})
            continue
        naive_dst = out / (dst if save_as == "pt" else "model.safetensors")
        for label, durable in ((f"naive {name}", "no-sync"), (f"naive+sync {name}", "sync")):
            cases.append({"name": label, "group": "naive", "source": s,
                          "argv": [sys.executable, "-c", NAIVE, json.dumps([str(p) for p in src.weights(s)]),
                                   str(naive_dst), save_as, durable]})
    for s in src.paths:
        for verb in ("detect", "inspect"):
            if wanted(f"{verb} {s}"):
                cases.append({"name": f"{verb} {s}", "group": verb, "source": s, "argv": [cli, verb, str(src.paths[s])]})
    return cases


def measure(cases: list[dict], out: Path, env: dict[str, str], repeat: int) -> dict[str, dict]:
    runs: dict[str, list] = {c["name"]: [] for c in cases}
    for rep in range(repeat):
        for c in cases:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            runs[c["name"]].append(bl.run(c["argv"], env))
            wall, rss, _ = runs[c["name"]][-1]
            print(f"  run {rep + 1}: {c['name']:<26} {wall:7.2f} s  {rss / MB:7.0f} MB", file=sys.stderr, flush=True)
    shutil.rmtree(out, ignore_errors=True)
    return {c["name"]: {**c, **bl.summarize(runs[c["name"]]), "argv": c["argv"]} for c in cases}


def verdicts(r: dict, results: dict, src: Sources) -> dict:
    """Ratios and PASS/MISS of one conversion against its source's cp and its naive case."""
    wall_x, rss_x, slack = TARGETS[r["group"]]
    cp, cps = results[f"cp {r['source']}"]["wall"], results[f"cp+sync {r['source']}"]["wall"]
    naive = results[r["naive"]]
    rss_target = rss_x * src.largest[r["source"]] + slack
    return {"x_cp": r["wall"] / cp, "x_cp_sync": r["wall"] / cps, "x_naive": r["wall"] / naive["wall"],
            "rss_x_naive": r["rss"] / naive["rss"], "rss_target": rss_target,
            "wall_ok": None if wall_x is None else r["wall"] <= wall_x * cps, "rss_ok": r["rss"] <= rss_target,
            "faster_ok": naive["wall"] >= NAIVE_WALL * r["wall"], "smaller_ok": naive["rss"] >= NAIVE_RSS * r["rss"]}


def mark(ok: bool | None) -> str:
    return "-" if ok is None else "PASS" if ok else "MISS"


def print_size(label: str, results: dict, src: Sources) -> None:
    print(f"\n== {label} ==")
    for s, p in src.paths.items():
        print(f"  {s:<16} {bl.human(src.size[s]):>8}  largest tensor {bl.human(src.largest[s]):>7}  {p.relative_to(src.root)}")
    if not results:
        return
    head = (f"{'case':<26} {'wall s':>7} {'min s':>6} {'cpu s':>5} {'x cp':>5} {'x cp+s':>6} {'x naive':>7} {'RSS MB':>7} "
            f"{'RSS tgt':>7} {'RSS/nv':>6}  {'wall':<4} {'RSS':<4} {'1.5x':<4} {'3x':<4}")
    print(head)
    print("-" * len(head))
    for r in results.values():
        if r["group"] in VERDICT_GROUPS:
            v = r["verdict"]
            print(f"{r['name']:<26} {r['wall']:7.2f} {r['wall_min']:6.2f} {r['cpu']:5.2f} {v['x_cp']:5.2f} {v['x_cp_sync']:6.2f} "
                  f"{v['x_naive']:7.2f} {r['rss'] / MB:7.0f} {v['rss_target'] / MB:7.0f} {v['rss_x_naive']:6.2f}  "
                  f"{mark(v['wall_ok'])} {mark(v['rss_ok'])} {mark(v['faster_ok'])} {mark(v['smaller_ok'])}")
        elif r["group"] != "naive":
            print(f"{r['name']:<26} {r['wall']:7.2f} {r['wall_min']:6.2f} {r['cpu']:5.2f} {'':>5} {'':>6} {'':>7} {r['rss'] / MB:7.0f}")
    naive = [r for r in results.values() if r["group"] == "naive"]
    if naive:
        print("naive paths (load all, rename, save):")
        for r in naive:
            print(f"  {r['name']:<26} {r['wall']:7.2f} s (cpu {r['cpu']:5.2f} s) {r['rss'] / MB:7.0f} MB")


def print_flatness(per_size: dict[str, dict]) -> list[dict]:
    """detect/inspect time per size, and the largest size's over the smallest's. The verdict
    takes the fastest of the runs (the least disturbed by other processes: these runs last
    a few tenths of a second, mostly start-up); medians and CPU seconds are shown beside."""
    labels = list(per_size)
    rows = []
    if len(labels) < 2:
        return rows
    names = [n for n, r in per_size[labels[0]].items() if r["group"] in ("detect", "inspect")]
    if not names:
        return rows
    first, last = labels[0], labels[-1]
    print(f"\n== detect / inspect time (s) vs size; target: {last} within {FLAT} x {first} (fastest run) ==")
    print(f"{'case':<26} " + " ".join(f"{'min ' + lab:>10}" for lab in labels) + f" {'ratio':>6}      "
          + " ".join(f"{'med ' + lab:>10}" for lab in labels) + " " + " ".join(f"{'cpu ' + lab:>10}" for lab in labels))
    for n in names:
        runs = [per_size[lab][n] for lab in labels]
        ratio = runs[-1]["wall_min"] / runs[0]["wall_min"]
        rows.append({"case": n, "wall_min": {lab: r["wall_min"] for lab, r in zip(labels, runs)},
                     "wall": {lab: r["wall"] for lab, r in zip(labels, runs)},
                     "cpu": {lab: r["cpu"] for lab, r in zip(labels, runs)}, "ratio": ratio, "ok": ratio <= FLAT})
        print(f"{n:<26} " + " ".join(f"{r['wall_min']:10.2f}" for r in runs) + f" {ratio:6.2f} {mark(ratio <= FLAT)} "
              + " ".join(f"{r['wall']:10.2f}" for r in runs) + " " + " ".join(f"{r['cpu']:10.2f}" for r in runs))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", default="100MB,1GB", help="comma-separated checkpoint sizes (default 100MB,1GB; add 4GB by hand)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the median is reported (default 3)")
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp dir (default /work; never a tmpfs)")
    ap.add_argument("--cases", default="", help="comma-separated substrings: only cases whose name holds one "
                    "(as mlx, moshi, nanogpt->, detect, inspect); cp and naive follow their conversions")
    ap.add_argument("--keep", action="store_true", help="keep the generated checkpoints")
    ap.add_argument("--json", type=Path, help="also write every result as JSON here")
    args = ap.parse_args()

    filters = [f for f in args.cases.split(",") if f]

    def wanted(name: str) -> bool:
        return not filters or any(f in name for f in filters)

    cli = shutil.which("ckpt-core", path=str(Path(sys.executable).parent)) or shutil.which("ckpt-core")
    if cli is None:
        raise SystemExit("no ckpt-core console script beside this python or on PATH")
    sizes = [(s.strip(), bl.parse_size(s.strip())) for s in args.size.split(",")]
    parent = bl.work_parent(args.dir)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-formats-", dir=parent))
    # Python start-up as an installed package has it: modules load from cached bytecode (this
    # dev tree's editable installs have none, and PYTHONDONTWRITEBYTECODE may be set), kept
    # outside the tree; the first run of each module fills the cache.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    df = subprocess.run(["df", "-h", str(work)], check=False, capture_output=True, text=True).stdout.strip().splitlines()
    print(f"filesystem {bl.fs_type(work)}: {df[-1] if df else ''}")
    print(f"python {sys.version.split()[0]}, torch {importlib.metadata.version('torch')}, "
          f"safetensors {importlib.metadata.version('safetensors')}, ckpt-core {importlib.metadata.version('ckpt-core')}, "
          f"{os.cpu_count()} CPUs, repeat {args.repeat} (median wall, highest RSS); page cache warm, nothing dropped")
    per_size: dict[str, dict] = {}
    report = {"sizes": {}}
    try:
        for label, size in sizes:
            root = work / label
            root.mkdir()
            print(f"\ngenerating {label} ...", file=sys.stderr, flush=True)
            src = Sources(root, size, cli, env)  # its ckpt-core runs fill the bytecode cache
            print(f"{label}: generated in {src.made:.0f} s; nanoGPT width {bl.gpt_shapes(size)[0]}, moshi dim "
                  f"{src.moshi_config['dim']} x {src.moshi_config['num_layers']} layers", file=sys.stderr)
            results = measure(plan(src, root / "dst", cli, wanted), root / "dst", env, args.repeat)
            for r in results.values():
                if r["group"] in VERDICT_GROUPS:
                    r["verdict"] = verdicts(r, results, src)
            print_size(label, results, src)
            per_size[label] = results
            report["sizes"][label] = {"bytes": src.size, "largest": src.largest, "results": results}
            if not args.keep:
                shutil.rmtree(root)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report["flatness"] = print_flatness(per_size)
    print("\nPASS/MISS: wall <= 1.25 x cp+sync (rename) or 2 x (layout); RSS <= target; "
          "1.5x: naive wall >= 1.5 x; 3x: naive RSS >= 3 x. Shared 2-core machine: walls are noisy.")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
