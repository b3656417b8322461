#!/usr/bin/env python
"""Speed and memory of ckpt-core's safetensors <-> canonical copy against `cp` and the naive
load-everything path, at one size, through the Python API (bench_formats.py covers the other
formats and the CLI).

Run by hand, never by CI (pytest does not collect it: bench/ is outside testpaths):

    python bench/bench_convert.py                    # 1 GB checkpoint, in a temp dir under /work
    python bench/bench_convert.py --size 100MB --repeat 5
    python bench/bench_convert.py --size 4GB --dir /scratch

It writes a safetensors checkpoint of about ``--size`` bytes with the shapes of a GPT with
4096-wide layers in BF16 (benchlib.gpt_shapes: embedding [50304, 4096]; per layer ln_1,
c_attn [12288, 4096], c_proj [4096, 4096], ln_2, c_fc [16384, 4096], mlp.c_proj [4096, 16384];
as many layers as fit; the width halves until an embedding and one layer fit a small --size),
then times
each case in its own subprocess (wall clock from the parent, peak RSS from wait4's rusage):

  cp             cp SRC DST
  cp+sync        cp SRC DST && sync DST        (ckpt-core fsyncs what it writes)
  to-canonical   ckpt_core.convert(SRC, DST, to="canonical")   (checksums every tensor)
  to-safetensors ckpt_core.convert(CANONICAL, DST, to="safetensors")
  naive          load the whole file (safetensors.torch.load_file when torch is installed,
                 else the raw bytes through numpy), rename every key, save_file (no fsync)
  load SRC       ckpt_core.load(SRC) and detect(SRC): header only, no tensor data
  load canonical the same for the canonical directory
  startup        python -c "import ckpt_core; registry()": the fixed cost of any run

Nothing is dropped from the page cache (that needs root and would measure the disk, not
the code): the source is read once before the runs, so every case starts with it cached;
`sync` runs before each case so that no earlier case's dirty pages are flushed inside
another's time. Python modules load from cached bytecode (kept in the temp dir), as they do
when installed. Targets: wall <= 1.25 x cp+sync, peak RSS <= 1.2 x largest tensor + 150 MB.
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

import benchlib as bl
import numpy as np
from benchlib import MB, remove, run

WALL_FACTOR = 1.25
RSS_FACTOR = 1.2
RSS_SLACK = 150 * MB


CONVERT = "import sys, ckpt_core; ckpt_core.convert(sys.argv[1], sys.argv[2], to=sys.argv[3])"

STARTUP = "import ckpt_core.plugins; ckpt_core.plugins.registry()"  # what every ckpt-core run pays first

LOAD = textwrap.dedent("""
    import sys, ckpt_core
    ck = ckpt_core.load(sys.argv[1])
    found = ckpt_core.detect(sys.argv[1])
    assert ck.tensors and found
""")

NAIVE = textwrap.dedent("""
    import json, struct, sys
    src, dst = sys.argv[1], sys.argv[2]
    rename = lambda k: k.replace("transformer.", "model.", 1)
    try:
        import torch
        from safetensors.torch import load_file, save_file
    except ImportError:
        torch = None
    if torch is not None:
        sd = load_file(src)                                   # everything in memory
        save_file({rename(k): v for k, v in sd.items()}, dst, metadata={"format": "pt"})
    else:
        import numpy as np
        from safetensors.numpy import save_file
        with open(src, "rb") as f:                            # everything in memory
            blob = f.read()
        (n,) = struct.unpack("<Q", blob[:8])
        header = json.loads(blob[8:8 + n])
        header.pop("__metadata__", None)
        width = {"BF16": np.uint16, "F16": np.float16, "F32": np.float32, "U8": np.uint8}
        sd = {k: np.frombuffer(blob, width[v["dtype"]], count=int(np.prod(v["shape"], dtype=np.int64)),
                               offset=8 + n + v["data_offsets"][0]).reshape(v["shape"])
              for k, v in header.items()}
        save_file({rename(k): v for k, v in sd.items()}, dst, metadata={"format": "pt"})
""")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--size", default="1GB", help="checkpoint size, as 100MB, 1GB, 4GB, 2GiB (default 1GB)")
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp dir (default /work; never a tmpfs)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per case; the median is reported (default 3)")
    ap.add_argument("--all-plugins", action="store_true",
                    help="load every installed plugin in the ckpt-core runs (default: built-in formats only)")
    ap.add_argument("--cli", action="store_true", help="run conversions through the ckpt-core console script")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    size = bl.parse_size(args.size)
    parent = bl.work_parent(args.dir)
    kind = bl.fs_type(parent)
    work = Path(tempfile.mkdtemp(prefix="ckpt-bench-", dir=parent))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")  # start-up from cached bytecode, as installed
    if not args.all_plugins:
        env["CKPT_CORE_PLUGINS"] = ""
    try:  # not imported here: it would only swell this process
        torch_note = "torch " + importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_note = "no torch: naive path reads raw bytes with numpy"

    try:
        d, shapes = bl.gpt_shapes(size)
        src = work / "model.safetensors"
        t0 = time.perf_counter()
        bl.write_safetensors(src, shapes, {"format": "pt"})
        made = time.perf_counter() - t0
        largest = 2 * max(int(np.prod(s)) for s in shapes.values())
        total = src.stat().st_size
        n_layer = sum(1 for k in shapes if k.endswith("attn.c_attn.weight"))
        print(f"source: {src} ({total / MB:.0f} MB, {len(shapes)} tensors, d_model {d}, {n_layer} layers, "
              f"largest tensor {largest / MB:.0f} MB; written in {made:.1f} s)")
        df = subprocess.run(["df", "-h", str(work)], check=False, capture_output=True, text=True).stdout.strip().splitlines()
        print(f"filesystem: {kind}; {df[-1] if df else ''}")
        print(f"python {sys.version.split()[0]}, {torch_note}, {os.cpu_count()} CPUs, "
              f"plugins: {'all installed' if args.all_plugins else 'built-ins only'}, repeat {args.repeat} (median)")
        print("page cache: nothing dropped; the source was read once to warm it\n")
        bl.warm(src)

        canon = work / "canon-input"  # the input of to-safetensors
        subprocess.run([sys.executable, "-c", CONVERT, str(src), str(canon), "canonical"], check=True, env=env)
        dst = work / "out"
        cli = shutil.which("ckpt-core", path=str(Path(sys.executable).parent))

        def convert_argv(source: Path, target: str) -> list[str]:
            if args.cli:
                if cli is None:
                    raise SystemExit("--cli: no ckpt-core console script beside this python")
                return [cli, "convert", str(source), str(dst), "--to", target, "--quiet"]
            return [sys.executable, "-c", CONVERT, str(source), str(dst), target]

        cases = [
            ("cp", ["cp", str(src), str(dst)], "ref"),
            ("cp+sync", ["sh", "-c", 'cp "$0" "$1" && sync "$1"', str(src), str(dst)], "ref"),
            ("to-canonical", convert_argv(src, "canonical"), "convert"),
            ("to-safetensors", convert_argv(canon, "safetensors"), "convert"),
            ("naive", [sys.executable, "-c", NAIVE, str(src), str(dst)], "naive"),
            ("load source", [sys.executable, "-c", LOAD, str(src)], "load"),
            ("load canonical", [sys.executable, "-c", LOAD, str(canon)], "load"),
            ("startup", [sys.executable, "-c", STARTUP], "startup"),
        ]
        # round robin, so that drift in the disk's speed (it varies a lot on shared or
        # virtual disks) spreads over every case instead of landing on one
        runs: dict[str, list[tuple[float, int]]] = {name: [] for name, _, _ in cases}
        for rep in range(args.repeat):
            for name, argv, _ in cases:
                remove(dst)
                runs[name].append(run(argv, env))
                remove(dst)
                print(f"  run {rep + 1}: {name:<15} {runs[name][-1][0]:7.2f} s  {runs[name][-1][1] / MB:7.0f} MB",
                      file=sys.stderr, flush=True)
        results = {name: {**bl.summarize(runs[name]), "role": role} for name, _, role in cases}
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    cp_wall = results["cp"]["wall"]
    ref_wall = results["cp+sync"]["wall"]
    start_wall = results["startup"]["wall"]
    naive_wall, naive_rss = results["naive"]["wall"], results["naive"]["rss"]
    rss_target = RSS_FACTOR * largest + RSS_SLACK
    print(f"targets: wall <= {WALL_FACTOR} x cp+sync = {WALL_FACTOR * ref_wall:.2f} s; "
          f"peak RSS <= {RSS_FACTOR} x largest tensor ({largest / MB:.0f} MB) + {RSS_SLACK // MB} MB = {rss_target / MB:.0f} MB")
    print("wall: median of the runs, whole process; net: minus the startup row (python + import ckpt_core)")
    header = (f"{'case':<15} {'wall s':>7} {'min s':>6} {'net s':>6} {'RSS MB':>7} {'x cp':>5} {'x cp+sync':>9} "
              f"{'x naive':>7} {'RSS x naive':>11}  {'wall':<5} {'RSS':<5}")
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        wall_ok = rss_ok = "-"
        if r["role"] == "convert":
            wall_ok = "PASS" if r["wall"] <= WALL_FACTOR * ref_wall else "MISS"
        if r["role"] in ("convert", "load"):
            rss_ok = "PASS" if r["rss"] <= rss_target else "MISS"
        net = f"{r['wall'] - start_wall:6.2f}" if r["role"] in ("convert", "load") else f"{'':6}"
        print(f"{name:<15} {r['wall']:7.2f} {r['wall_min']:6.2f} {net} {r['rss'] / MB:7.0f} {r['wall'] / cp_wall:5.2f} "
              f"{r['wall'] / ref_wall:9.2f} {r['wall'] / naive_wall:7.2f} {r['rss'] / naive_rss:11.2f}  {wall_ok:<5} {rss_ok:<5}")
    print(f"largest tensor: {largest / MB:.0f} MB; checkpoint {total / MB:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"size": total, "largest": largest, "d_model": d, "results": results}, indent=2))


if __name__ == "__main__":
    main()
