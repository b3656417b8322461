#!/usr/bin/env python
"""Start-up of the `ckpt-core` command: what `--help`, `plugins`, and `detect` / `inspect` of a
small checkpoint cost beyond `python -c pass`.

Run by hand, never by CI (pytest does not collect it: bench/ is outside testpaths):

    python bench/bench_startup.py                  # medians of 10, temp dir under /work
    python bench/bench_startup.py --repeat 20 --json out.json

It writes a small BF16 safetensors file with GPT shapes (benchlib.gpt_shapes, about 10 MB:
its family is recognised, as a real one's is) and converts it to a canonical directory,
then times, each in its own process (benchlib.run: wall from the parent, CPU time user +
system), round robin so that drift spreads over every case:

  python -c pass                  the interpreter alone (this venv's python)
  --help, plugins                 `ckpt-core --help`, `ckpt-core plugins`
  detect, inspect FILE            `ckpt-core detect` / `inspect` of the safetensors file
  detect, inspect DIR             the same of the canonical directory

Every run is the installed console script with every installed plugin, as a user runs it,
with modules loaded from cached bytecode (kept in the temp dir), as they are when installed;
one untimed run of each case fills that cache first. Target (issue 16): each command's
median wall within 0.15 s of `python -c pass`'s. CPU time is printed beside wall: it
barely moves when other processes share the cores, which wall does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import benchlib as bl

TARGET = 0.15  # seconds over `python -c pass`


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__)
    ap.add_argument("--repeat", type=int, default=10, help="runs per case; the median is reported (default 10)")
    ap.add_argument("--dir", type=Path, default=None, help="where to make the temp dir (default /work; never a tmpfs)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = ap.parse_args()

    cli = shutil.which("ckpt-core", path=str(Path(sys.executable).parent))
    if cli is None:
        raise SystemExit("no ckpt-core console script beside this python: pip install -e . first")
    work = Path(tempfile.mkdtemp(prefix="ckpt-startup-", dir=bl.work_parent(args.dir)))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE", "CKPT_CORE_PLUGINS")}
    env["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        src, canon = work / "model.safetensors", work / "canonical"
        bl.write_safetensors(src, bl.gpt_shapes(10 * bl.MB)[1], {"format": "pt"})
        subprocess.run([cli, "convert", str(src), str(canon), "--to", "canonical", "--quiet"], check=True, env=env)
        cases = {
            "python -c pass": [sys.executable, "-c", "pass"],
            "--help": [cli, "--help"],
            "plugins": [cli, "plugins"],
            "detect FILE": [cli, "detect", str(src)],
            "inspect FILE": [cli, "inspect", str(src)],
            "detect DIR": [cli, "detect", str(canon)],
            "inspect DIR": [cli, "inspect", str(canon)],
        }
        for argv in cases.values():
            bl.run(argv, env)
        runs: dict[str, list] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, argv in cases.items():
                runs[name].append(bl.run(argv, env))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    results = {name: bl.summarize(samples) for name, samples in runs.items()}
    base = results["python -c pass"]
    plugins = subprocess.run([cli, "plugins", "--json"], check=True, capture_output=True, text=True, env=env).stdout
    names = [p["name"] for p in json.loads(plugins)["plugins"]]
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, plugins: {', '.join(names)}; "
          f"median of {args.repeat} runs; target: wall <= python -c pass + {TARGET:.2f} s")
    header = f"{'case':<15} {'wall ms':>8} {'min ms':>7} {'CPU ms':>7} {'+wall ms':>9} {'+CPU ms':>8}  target"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        extra, verdict = "", ""
        if name != "python -c pass":
            extra = f"{1000 * (r['wall'] - base['wall']):9.0f} {1000 * (r['cpu'] - base['cpu']):8.0f}"
            verdict = "PASS" if r["wall"] - base["wall"] <= TARGET else "MISS"
        print(f"{name:<15} {1000 * r['wall']:8.0f} {1000 * r['wall_min']:7.0f} {1000 * r['cpu']:7.0f} {extra:>18}  {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"repeat": args.repeat, "results": results}, indent=2))


if __name__ == "__main__":
    main()
