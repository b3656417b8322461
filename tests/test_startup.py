"""Start-up: `ckpt-core --help`, `plugins`, and `detect` / `inspect` of a safetensors file or a
canonical directory import neither numpy nor torch nor mlx (issue 16). Those load where
tensor data is read or computed. Each command runs in a fresh interpreter with every
installed plugin, as a user runs it. (Its time is measured in bench/bench_startup.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY_GPT = Path(__file__).parents[1] / "examples" / "tiny-gpt.safetensors"
HEAVY = ("numpy", "torch", "mlx")
PLUGINS = {"hf", "lora", "mlx", "moshi_ttt", "nanogpt", "swiftkv"}

# Runs the command, then writes what it imported (and, once the command is done, which
# plugins are installed) to the file named by its first argument.
PROBE = """
import json, sys
from ckpt_core.cli import main

try:
    main(sys.argv[2:])
except SystemExit as e:
    code = e.code
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(HEAVY))
from ckpt_core.plugins import registry

reg = registry()
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "heavy": heavy, "plugins": [p.name for p in reg.plugins if not p.error]}, f)
""".replace("HEAVY", repr(HEAVY))


def ckpt_core(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "probe.json"
    env = {k: v for k, v in os.environ.items() if k != "CKPT_CORE_PLUGINS"}  # every installed plugin
    subprocess.run([sys.executable, "-c", PROBE, str(out), *args], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def canonical(tmp_path_factory):
    path = tmp_path_factory.mktemp("startup") / "canon"
    assert ckpt_core(path.parent, "convert", str(TINY_GPT), str(path), "--to", "canonical", "--quiet")["code"] == 0
    return path


@pytest.mark.parametrize("args", [["--help"], ["plugins"], ["detect", "FILE"], ["inspect", "FILE"], ["detect", "DIR"],
                                  ["inspect", "DIR"], ["inspect", "DIR", "--json"]], ids=" ".join)
def test_listing_and_reading_headers_import_no_array_library(tmp_path, canonical, args):
    args = [{"FILE": str(TINY_GPT), "DIR": str(canonical)}.get(a, a) for a in args]
    found = ckpt_core(tmp_path, *args)
    assert found["code"] == 0
    assert PLUGINS <= set(found["plugins"]), found["plugins"]  # every plugin was there to be loaded
    assert found["heavy"] == [], f"ckpt-core {' '.join(args)} imported {found['heavy']}"


def test_the_probe_sees_an_array_library_when_tensor_data_is_read(tmp_path):
    """The check above can fail: `diff` reads tensor bytes, which needs numpy."""
    found = ckpt_core(tmp_path, "diff", str(TINY_GPT), str(TINY_GPT))
    assert found["code"] == 0 and "numpy" in found["heavy"]
