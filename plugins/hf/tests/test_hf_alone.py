"""ckpt-plugin-hf stands alone: it imports no other plugin (checked in its source and in a
running interpreter), and with only the nanogpt plugin beside it a nanoGPT checkpoint
exports to HF. (Installing exactly core + nanogpt + hf into a fresh venv is
tests/test_nanogpt_hf.py's opt-in test.)"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import ckpt_plugin_hf

PACKAGE = Path(ckpt_plugin_hf.__file__).parent
EXAMPLE = Path(__file__).parents[3] / "examples" / "tiny-nanogpt" / "ckpt.pt"


def test_no_module_imports_another_plugin():
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            stray = [n for n in names if n.startswith("ckpt_plugin") and not n.startswith("ckpt_plugin_hf")]
            assert not stray, f"{path.name} imports {stray}"


PROBE = """
import json, sys
from ckpt_core import api
from ckpt_core.plugins import registry

api.convert(sys.argv[1], sys.argv[2], "hf", allow_loss=["train_state"])
mods = sorted({m.split(".")[0] for m in sys.modules if m.startswith("ckpt_plugin")})
print(json.dumps({"modules": mods, "plugins": [p.name for p in registry().plugins if not p.error]}))
"""


def test_with_only_nanogpt_beside_it_a_nanogpt_run_exports(tmp_path):
    env = {**os.environ, "CKPT_CORE_PLUGINS": "nanogpt,hf"}
    done = subprocess.run([sys.executable, "-c", PROBE, str(EXAMPLE), str(tmp_path / "gpt2-hf")], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["modules"] == ["ckpt_plugin_hf", "ckpt_plugin_nanogpt"], found
    assert set(found["plugins"]) == {"canonical", "safetensors", "gpt", "nanogpt", "hf"}
    assert json.loads((tmp_path / "gpt2-hf" / "config.json").read_text())["model_type"] == "gpt2"
