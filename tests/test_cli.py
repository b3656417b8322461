"""The ``ckpt-core`` command line, run in-process (``main([...])``) and as a real process."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import ckpt_core
from ckpt_core import Adapter, Arch, Checkpoint, OptimizerState, Tensor, TrainState, plugins
from ckpt_core.cli import main, parse_value

D, V, BLOCK, FF = 8, 32, 16, 32


@pytest.fixture(autouse=True)
def builtins_only(monkeypatch):
    """Only the built-in formats, whatever plugins the environment has installed."""
    monkeypatch.setenv(plugins.ENV_VAR, "")
    plugins.reset()
    yield
    plugins.reset()


@pytest.fixture
def cli(capsys):
    """Run ``ckpt-core ARGS...`` in-process; return (exit code, stdout, stderr)."""
    def run(*args):
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err
    return run


def gpt_arrays() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shapes = {"transformer.wte.weight": (V, D), "transformer.wpe.weight": (BLOCK, D)}
    for i in range(2):
        h = f"transformer.h.{i}."
        shapes.update({h + "ln_1.weight": (D,), h + "attn.c_attn.weight": (3 * D, D), h + "attn.c_proj.weight": (D, D),
                       h + "ln_2.weight": (D,), h + "mlp.c_fc.weight": (FF, D), h + "mlp.c_proj.weight": (D, FF)})
    shapes.update({"transformer.ln_f.weight": (D,), "lm_head.weight": (V, D)})
    return {name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()}


def gpt_file(tmp_path: Path) -> Path:
    path = tmp_path / "gpt.safetensors"
    save_file(gpt_arrays(), str(path))
    return path


def mixed_checkpoint() -> Checkpoint:
    """Three tensors, one of them BF16 (raw uint16 words)."""
    rng = np.random.default_rng(1)
    return Checkpoint(tensors={
        "w": Tensor.from_numpy(rng.standard_normal((4, 6)).astype(np.float32)),
        "h": Tensor.from_numpy(rng.integers(0, 2**16, (5, 3), dtype=np.uint16), "BF16"),
        "n": Tensor.from_numpy(np.arange(7, dtype=np.int64)),
    })


def rich_checkpoint() -> Checkpoint:
    """A gpt model with a tie, a LoRA adapter, KV sharing and training state."""
    tensors = {k: Tensor.from_numpy(v) for k, v in gpt_arrays().items() if k != "lm_head.weight"}
    base = "transformer.h.0.attn.c_attn.weight"
    adapter = Adapter(Tensor.from_numpy(np.ones((4, D), np.float32)), Tensor.from_numpy(np.zeros((3 * D, 4), np.float32)), 8.0)
    state = TrainState(step=100, epoch=2, best_metric=Tensor.from_numpy(np.array(2.5, np.float32)), metrics={"loss": 2.5},
                       optimizer=OptimizerState("adamw", {base: {"exp_avg": Tensor.from_numpy(np.zeros((3 * D, D), np.float32))}}))
    return Checkpoint(arch=Arch("gpt", {"dropout": 0.0}), tensors=tensors, ties={"lm_head.weight": "transformer.wte.weight"},
                      kv_sharing={1: 0}, adapters={base: adapter}, train_state=state)


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (or the file itself) and its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(directory: Path) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(".") and "tmp" in p.name]


# -- detect and inspect ------------------------------------------------------------------


def test_detect_text_and_json(cli, tmp_path):
    path = gpt_file(tmp_path)
    code, out, err = cli("detect", path)
    assert code == 0 and err == ""
    assert out.splitlines()[0].split() == ["FORMAT", "CONFIDENCE", "REASON"]
    assert "safetensors" in out and "safetensors file with 16 tensors" in out

    code, out, _ = cli("detect", path, "--json")
    data = json.loads(out)
    assert data["detections"][0] == {"format": "safetensors", "confidence": 0.5, "reason": "safetensors file with 16 tensors"}


def test_global_flags_before_or_after_the_command(cli, tmp_path):
    path = gpt_file(tmp_path)
    before, after = cli("--json", "detect", path), cli("detect", path, "--json")
    assert before == after and json.loads(before[1])["path"] == str(path)


def test_inspect_reads_no_tensor_data(cli, tmp_path, monkeypatch):
    path = gpt_file(tmp_path)
    monkeypatch.setattr(Tensor, "raw", lambda self: pytest.fail("inspect read tensor data"))
    code, out, err = cli("inspect", path, "--json")
    assert code == 0 and err == ""
    data = json.loads(out)
    arrays = gpt_arrays()
    assert data["format"] == "safetensors" and data["family"] == "gpt"
    assert data["params"] == {"n_layer": 2, "vocab_size": V, "d_model": D, "block_size": BLOCK, "d_ff": FF}
    assert data["counts"] == {"tensors": 16, "tied": 0, "adapters": 0, "absent": 0, "adapter_parameters": 0,
                              "parameters": sum(a.size for a in arrays.values()),
                              "bytes": sum(a.nbytes for a in arrays.values())}
    assert data["dtypes"] == {"F32": {"tensors": 16, "bytes": data["counts"]["bytes"]}}
    rows = {t["name"]: t for t in data["tensors"]}
    assert rows["transformer.wte.weight"] == {"name": "transformer.wte.weight", "dtype": "F32", "shape": [V, D], "bytes": V * D * 4,
                                  "tied_to": None, "absent": False, "adapter": None}
    assert data["train_state"] is None

    code, out, _ = cli("inspect", path)
    assert code == 0
    assert re.search(r"^family\s+gpt$", out, re.M) and re.search(r"^\s+vocab_size\s+32$", out, re.M)
    assert re.search(r"^transformer\.wte\.weight\s+F32\s+\[32, 8\]\s+1\.0 KiB$", out, re.M)
    assert re.search(r"^train state\s+none$", out, re.M)


def test_inspect_limit(cli, tmp_path):
    path = gpt_file(tmp_path)
    _, out, _ = cli("inspect", path, "--limit", "3")
    assert "... 13 more (--limit 0 shows all)" in out and "transformer.wte.weight" not in out
    _, out, _ = cli("inspect", path, "--limit", "0")
    assert "more (--limit" not in out and "transformer.wte.weight" in out


def test_inspect_ties_adapters_and_train_state(cli, tmp_path):
    path = tmp_path / "canon"
    ckpt_core.save(rich_checkpoint(), path, "canonical")
    code, out, err = cli("inspect", path, "--json")
    assert code == 0, err
    data = json.loads(out)
    assert data["format"] == "canonical" and data["family"] == "gpt"
    assert data["params"]["dropout"] == 0.0 and data["params"]["n_layer"] == 2 and data["params"]["vocab_size"] == V
    rows = {t["name"]: t for t in data["tensors"]}
    assert rows["lm_head.weight"]["tied_to"] == "transformer.wte.weight" and rows["lm_head.weight"]["bytes"] == 0
    assert rows["transformer.h.0.attn.c_attn.weight"]["adapter"] == {"rank": 4, "alpha": 8.0, "scale": 2.0,
                                                                     "scaling": "alpha/rank", "kind": "linear"}
    assert data["ties"] == {"lm_head.weight": "transformer.wte.weight"} and data["kv_sharing"] == {"1": 0}
    assert data["counts"]["adapters"] == 1 and data["counts"]["adapter_parameters"] == 4 * D + 3 * D * 4
    assert data["train_state"] == {"step": 100, "epoch": 2, "best_metric": 2.5, "metrics": ["loss"],
                                   "optimizer": {"kind": "adamw", "parameters": 1, "resumable": True}}

    _, out, _ = cli("inspect", path, "--limit", "0")
    assert re.search(r"^lm_head\.weight\s+F32\s+\[32, 8\]\s+-\s+-> transformer\.wte\.weight$", out, re.M)
    assert "lora rank 4, alpha 8, scale 2" in out
    assert re.search(r"^\s+optimizer\s+adamw, 1 parameter with state, resumable$", out, re.M)
    assert re.search(r"^\s+best metric\s+2\.5$", out, re.M)


# -- convert and diff --------------------------------------------------------------------


def test_convert_chain_is_bit_exact(cli, tmp_path):
    src = tmp_path / "src.safetensors"
    ckpt_core.save(mixed_checkpoint(), src, "safetensors")
    code, out, err = cli("convert", src, tmp_path / "c1", "--to", "canonical")
    assert code == 0 and err == ""
    assert re.fullmatch(r"wrote \S+c1 \(canonical, 3 tensors, \d+\.\d KiB\)\n", out)
    code, out, _ = cli("convert", tmp_path / "c1", tmp_path / "c2", "--to", "canonical", "--json")
    assert code == 0
    facts = json.loads(out)
    assert facts["format"] == "canonical" and facts["tensors"] == 3 and facts["bytes"] > 0

    code, out, _ = cli("diff", src, tmp_path / "c2")
    assert code == 0 and out == "identical: 3 tensors, bit for bit\n"
    a, b = ckpt_core.load(src), ckpt_core.load(tmp_path / "c2")
    assert b.tensors["h"].dtype == "BF16"
    assert all(a.tensors[n].tobytes() == b.tensors[n].tobytes() for n in a.tensors)


def test_diff_reports_changes_and_tolerance(cli, tmp_path):
    arrays = {"w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), "u": np.ones(3, np.float32)}
    save_file(arrays, str(tmp_path / "a.safetensors"))
    save_file({**arrays, "w": arrays["w"] + np.float32(1e-4)}, str(tmp_path / "b.safetensors"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"

    code, out, _ = cli("diff", a, b)
    assert code == 1
    assert out.startswith("different: 1 of 2 tensors differ bit for bit")
    assert re.search(r"^w\s+different\s+bytes differ$", out, re.M) and not re.search(r"^u\s", out, re.M)
    _, out, _ = cli("diff", a, b, "--verbose")
    assert re.search(r"^u\s+same$", out, re.M)

    code, out, _ = cli("diff", a, b, "--atol", "1e-3")
    assert code == 0 and out.startswith("identical: 2 tensors, within atol 0.001, rtol 0")
    code, out, _ = cli("diff", a, b, "--rtol", "1e-9", "--json")
    data = json.loads(out)
    assert code == 1 and data["identical"] is False and data["counts"] == {"different": 1, "same": 1}
    assert [t["name"] for t in data["tensors"]] == ["w"] and data["tensors"][0]["max_abs_diff"] > 0


def test_convert_options_reach_the_writer(cli, tmp_path):
    src = tmp_path / "src.safetensors"
    save_file({f"t{i}": np.zeros(200, np.float32) for i in range(3)}, str(src))
    code, _, err = cli("convert", src, tmp_path / "out", "--to", "canonical", "--option", "max_shard_size=1000")
    assert code == 0, err
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) == 3
    code, _, err = cli("convert", src, tmp_path / "out2", "--to", "canonical", "-o", "max_shard_size=1KB")
    assert code == 0, err
    assert len(list((tmp_path / "out2").glob("model-*.safetensors"))) == 3


@pytest.mark.parametrize("text, value", [
    ('{"a": [1, 2]}', {"a": [1, 2]}),
    ("{12: 11, 16: 15}", {12: 11, 16: 15}),
    ("true", True),
    ("1e-3", 0.001),
    ("(1, 2)", (1, 2)),
    ("5GB", "5GB"),
    ("hello world", "hello world"),
    ("", ""),
])
def test_option_values(text, value):
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_lossy_conversion_allowed_by_flags(cli, tmp_path):
    src = tmp_path / "canon"
    ckpt_core.save(rich_checkpoint(), src, "canonical")
    code, out, err = cli("convert", src, tmp_path / "w.safetensors", "--to", "safetensors", "--merge-adapters",
                         "--allow-loss", "train_state", "--quiet")
    assert (code, out, err) == (0, "", "")
    written = ckpt_core.load(tmp_path / "w.safetensors")
    assert written.train_state is None and not written.adapters and written.kv_sharing == {1: 0}


# -- errors ------------------------------------------------------------------------------


def _unsafe_dir(tmp_path: Path) -> Path:
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"w": np.zeros(2, np.float32)}, str(d / "model-00001-of-00001.safetensors"))
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "x.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../x.safetensors"}}))
    return d


def _make(kind: str, tmp_path: Path) -> tuple[list, Path]:
    """A failing command of ``kind``, and its source."""
    dst = tmp_path / "out"
    if kind == "missing":
        return ["convert", tmp_path / "nope.safetensors", dst, "--to", "canonical"], tmp_path / "nope.safetensors"
    if kind == "unknown":
        src = tmp_path / "blob.bin"
        src.write_bytes(bytes(range(256)) * 4)
    elif kind == "corrupt":
        src = gpt_file(tmp_path)
        src.write_bytes(src.read_bytes()[:-100])
    elif kind == "unsafe":
        src = _unsafe_dir(tmp_path)
    elif kind == "lossy-train-state":
        src = tmp_path / "canon"
        ckpt_core.save(rich_checkpoint().evolve(adapters={}), src, "canonical")
        return ["convert", src, tmp_path / "out.safetensors", "--to", "safetensors"], src
    elif kind == "lossy-adapters":
        src = tmp_path / "canon"
        ckpt_core.save(rich_checkpoint().evolve(train_state=None), src, "canonical")
        return ["convert", src, tmp_path / "out.safetensors", "--to", "safetensors"], src
    else:
        src = gpt_file(tmp_path)
        if kind == "exists":
            dst.write_bytes(b"keep me")
        elif kind == "unknown-target":
            return ["convert", src, dst, "--to", "no-such-format"], src
        elif kind == "unknown-option":
            return ["convert", src, dst, "--to", "canonical", "--option", "nope=1"], src
    return ["convert", src, dst, "--to", "canonical"], src


@pytest.mark.parametrize("kind, code, words", [
    ("missing", 3, "no such file"),
    ("unknown", 4, "no installed format recognises it"),
    ("unknown-target", 4, "no installed format 'no-such-format'"),
    ("corrupt", 5, "lies outside the"),
    ("unsafe", 6, "not a plain file name"),
    ("lossy-train-state", 7, "allow with --allow-loss train_state"),
    ("lossy-adapters", 7, "allow with --merge-adapters"),
    ("exists", 8, "pass --overwrite"),
    ("unknown-option", 2, "has no option 'nope'"),
])
def test_errors_exit_codes_and_write_nothing(cli, tmp_path, kind, code, words):
    args, src = _make(kind, tmp_path)
    before = snapshot(src) if src.exists() else None
    outside = sorted(p.name for p in tmp_path.iterdir())
    got, out, err = cli(*args)
    assert got == code
    assert out == "" and err.startswith("ckpt-core: error: ") and err.count("\n") == 1, err
    assert words in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == outside and leftovers(tmp_path) == []
    if kind == "exists":
        assert (tmp_path / "out").read_bytes() == b"keep me"
    if before is not None:
        assert snapshot(src) == before


@pytest.mark.parametrize("command", ["detect", "inspect"])
def test_read_errors(cli, tmp_path, command):
    assert cli(command, tmp_path / "nope")[0] == 3
    blob = tmp_path / "blob.bin"
    blob.write_bytes(bytes(range(256)) * 4)
    code, out, err = cli(command, blob)
    assert code == 4 and out == "" and err.count("\n") == 1


def test_bad_option_is_a_usage_error(cli, tmp_path):
    src = gpt_file(tmp_path)
    code, out, err = cli("convert", src, tmp_path / "out", "--to", "canonical", "--option", "verify")
    assert code == 2 and out == "" and "expected KEY=VALUE, got 'verify'" in err
    assert cli("convert", src, tmp_path / "out", "--to", "canonical", "--allow-loss", "weights")[0] == 2
    assert cli("frobnicate")[0] == 2
    assert not (tmp_path / "out").exists()


def test_internal_error_and_debug(cli, tmp_path, monkeypatch):
    def boom(path):
        raise RuntimeError("something broke")
    monkeypatch.setattr(ckpt_core.api, "detect", boom)
    code, out, err = cli("detect", tmp_path)
    assert code == 10 and err == "ckpt-core: internal error: RuntimeError: something broke (run with --debug for the traceback)\n"
    code, out, err = cli("detect", tmp_path, "--debug")
    assert code == 10 and "Traceback" in err and err.endswith("ckpt-core: internal error: RuntimeError: something broke\n")

    def interrupted(path):
        raise KeyboardInterrupt
    monkeypatch.setattr(ckpt_core.api, "detect", interrupted)
    assert cli("detect", tmp_path) == (130, "", "ckpt-core: interrupted\n")


# -- plugins and help --------------------------------------------------------------------


def test_plugins_lists_builtins(cli):
    code, out, err = cli("plugins")
    assert code == 0 and err == ""
    assert "format canonical:" in out and "format safetensors:" in out and "family gpt:" in out
    assert re.search(r"^\s+capabilities\s+kv_sharing, ties, trainable$", out, re.M)

    data = json.loads(cli("plugins", "--json")[1])
    formats = {f["name"]: f for p in data["plugins"] for f in p["formats"]}
    assert set(formats) == {"canonical", "safetensors"}
    assert formats["safetensors"]["capabilities"] == ["kv_sharing", "ties", "trainable"]
    assert formats["canonical"]["options"].keys() == {"max_shard_size", "verify"}
    assert all(p["error"] is None and p["distribution"] == "ckpt-core" for p in data["plugins"])


def test_plugins_reports_a_broken_plugin(cli, tmp_path, monkeypatch):
    dist = tmp_path / "ckpt_plugin_broken-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ckpt-plugin-broken\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ckpt_core]\nbroken = no_such_module_here\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(plugins.ENV_VAR, "broken")
    plugins.reset()
    code, out, _ = cli("plugins")
    assert code == 0 and "broken  (ckpt-plugin-broken 0.1)" in out and "FAILED TO LOAD: import failed" in out
    assert "format canonical:" in out


def test_help(cli):
    code, out, _ = cli("--help")
    assert code == 0 and "examples:" in out and "exit codes:" in out
    for verb in ("detect", "inspect", "convert", "diff", "plugins", "ls", "latest", "prune"):
        assert f"ckpt-core {verb}" in out
        code, out_verb, _ = cli(verb, "--help")
        assert code == 0 and "examples:" in out_verb and f"ckpt-core {verb} " in out_verb


# -- run directories ---------------------------------------------------------------------

STEPS_PLUGIN = '''
import re
from ckpt_core import FormatSpec, RunEntry, hookimpl

@hookimpl
def ckpt_formats():
    return [FormatSpec("steps", "step_N.safetensors files in a run directory", run_dirs=True)]

@hookimpl
def list_checkpoints(run_dir, format):
    if format != "steps":
        return None
    entries = []
    for p in run_dir.iterdir():
        m = re.fullmatch(r"step_(\\d+)\\.(safetensors|partial)", p.name)
        if m:
            done = m[2] == "safetensors"
            entries.append(RunEntry(p, int(m[1]), done, (p,), note="" if done else "interrupted save"))
    return entries or None
'''


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run directory of step_N files, with a test plugin (``steps``) that lists it."""
    site = tmp_path / "site"
    dist = site / "ckpt_plugin_steps-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "steps_plugin.py").write_text(STEPS_PLUGIN)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ckpt-plugin-steps\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[ckpt_core]\nsteps = steps_plugin\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv(plugins.ENV_VAR, "steps")
    plugins.reset()
    run = tmp_path / "run"
    run.mkdir()
    for step in (100, 200, 300):
        save_file({"w": np.full(4, step, np.float32)}, str(run / f"step_{step}.safetensors"))
    (run / "step_400.partial").write_bytes(b"half")
    yield run
    plugins.reset()
    sys.modules.pop("steps_plugin", None)


def test_ls(cli, run_dir):
    code, out, _ = cli("ls", run_dir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"{run_dir}: 4 checkpoints (3 complete), format steps"
    assert [line.split()[:2] for line in lines[2:]] == [["100", "complete"], ["200", "complete"], ["300", "complete"],
                                                         ["400", "incomplete"]]
    assert lines[-1].endswith("interrupted save")
    data = json.loads(cli("ls", run_dir, "--json")[1])
    assert data["format"] == "steps"
    assert [(c["step"], c["complete"]) for c in data["checkpoints"]] == [(100, True), (200, True), (300, True), (400, False)]


def test_latest(cli, run_dir):
    assert cli("latest", run_dir) == (0, f"{run_dir / 'step_300.safetensors'}\n", "")
    assert json.loads(cli("latest", run_dir, "--json", "--format", "steps")[1])["step"] == 300
    for step in (100, 200, 300):
        (run_dir / f"step_{step}.safetensors").unlink()
    code, _, err = cli("latest", run_dir)
    assert code == 3 and "no complete checkpoint" in err


def test_prune(cli, run_dir):
    everything = sorted(p.name for p in run_dir.iterdir())
    code, out, _ = cli("prune", run_dir, "--keep", "1", "--dry-run")
    assert code == 0 and sorted(p.name for p in run_dir.iterdir()) == everything
    assert out.splitlines() == [f"would delete {run_dir / 'step_100.safetensors'}",
                                f"would delete {run_dir / 'step_200.safetensors'}", "would delete 2 checkpoints"]

    code, out, _ = cli("prune", run_dir, "--keep", "1", "--json")
    assert code == 0 and [e["step"] for e in json.loads(out)["deleted"]] == [100, 200]
    assert sorted(p.name for p in run_dir.iterdir()) == ["step_300.safetensors", "step_400.partial"]
    assert cli("prune", run_dir, "--keep", "1") == (0, "nothing to prune\n", "")
    assert cli("prune", run_dir, "--keep", "0")[0] == 2


def test_plugins_lists_an_entry_point_plugin(cli, run_dir):
    _, out, _ = cli("plugins")
    assert "steps  (ckpt-plugin-steps 0.1)" in out and re.search(r"^\s+run dirs\s+yes$", out, re.M)
    data = json.loads(cli("plugins", "--json")[1])
    steps = next(p for p in data["plugins"] if p["name"] == "steps")
    assert steps["distribution"] == "ckpt-plugin-steps" and steps["version"] == "0.1" and steps["error"] is None
    assert steps["formats"][0]["name"] == "steps" and steps["formats"][0]["run_dirs"] is True


def test_run_dir_without_a_format(cli, tmp_path):
    code, _, err = cli("ls", tmp_path)
    assert code == 4 and "no installed format recognises this run directory" in err
    code, _, err = cli("latest", gpt_file(tmp_path))
    assert code == 2 and "not a directory" in err


# -- the real command --------------------------------------------------------------------


def _command() -> list[str]:
    """The installed console script (this interpreter's first), else the module."""
    script = shutil.which("ckpt-core", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    return [script] if script else [sys.executable, "-m", "ckpt_core.cli"]


def test_console_script(tmp_path):
    done = subprocess.run([*_command(), "inspect", tmp_path / "nope"], capture_output=True, text=True)
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr == f"ckpt-core: error: {tmp_path / 'nope'}: no such file or directory\n"
    done = subprocess.run([*_command(), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("ckpt-core ")


def test_python_dash_m(tmp_path):
    path = gpt_file(tmp_path)
    done = subprocess.run([sys.executable, "-m", "ckpt_core", "inspect", path, "--json"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == ""
    assert json.loads(done.stdout)["family"] == "gpt"
    done = subprocess.run([sys.executable, "-m", "ckpt_core", "convert", path, tmp_path / "c", "--to", "canonical"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "" and done.stdout.startswith("wrote ")


def test_plugin_warnings_print_as_one_line_each_on_stderr(cli, monkeypatch):
    import warnings

    from ckpt_core import CkptWarning, api

    original = api.load

    def load_with_warning(*args, **kwargs):
        warnings.warn("families differ:\ncompute differently", CkptWarning)
        warnings.warn("families differ:\ncompute differently", CkptWarning)
        return original(*args, **kwargs)

    monkeypatch.setattr(api, "load", load_with_warning)
    example = Path(__file__).parents[1] / "examples" / "tiny-gpt.safetensors"
    code, out, err = cli("--json", "inspect", example)
    assert code == 0
    assert json.loads(out)["format"] == "safetensors"
    assert err == "ckpt-core: warning: families differ: compute differently\n"


def test_long_lists_in_inspect_show_the_first_few_and_a_count():
    from ckpt_core.cli import _first

    assert _first([]) == "none"
    assert _first(["a", "b", "c", "d"]) == "a, b, c, d"
    assert _first(list("abcdefg")) == "a, b, c and 4 more (--json lists all)"


def test_inspect_passes_reader_options(cli, tmp_path):
    canon = tmp_path / "canon"
    ckpt_core.save(mixed_checkpoint(), canon, "canonical")
    code, out, _ = cli("inspect", canon, "--option", "verify=true", "--json")
    assert code == 0 and json.loads(out)["counts"]["tensors"] == 3
    shard = next(canon.glob("model*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the last tensor's data: headers still read fine
    shard.write_bytes(bytes(data))
    assert cli("inspect", canon)[0] == 0
    code, _, err = cli("inspect", canon, "-o", "verify=true")
    assert code == 5 and "checksum" in err
    code, _, err = cli("inspect", canon, "-o", "step=3")
    assert code == 2 and "has no option 'step'" in err


# -- usage errors and extreme input: one line, the right code, nothing written ----------------


USAGE_ERRORS = [
    ([], "ckpt-core"),
    (["frobnicate"], "ckpt-core"),
    (["convert", "a"], "ckpt-core convert"),
    (["convert", "a", "b", "--to", "canonical", "--allow-loss", "weights"], "ckpt-core convert"),
    (["convert", "a", "b", "--to", "canonical", "--option", "verify"], "ckpt-core convert"),
    (["inspect", "a", "--limit", "many"], "ckpt-core inspect"),
    (["prune", "run", "--keep", "x"], "ckpt-core prune"),
    (["diff", "a", "b", "--atol", "x"], "ckpt-core diff"),
    (["ls"], "ckpt-core ls"),
    (["--json", "detect"], "ckpt-core detect"),
]


@pytest.mark.parametrize("argv, prog", USAGE_ERRORS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_usage_errors_print_one_line(cli, argv, prog):
    """argparse's errors: one line naming what is wrong and where to read more (not the
    usage block before it), exit 2, nothing on stdout."""
    code, out, err = cli(*argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ckpt-core: error: ") and err.endswith(f" (see {prog} --help)\n"), err


def test_help_still_shows_usage(cli):
    code, out, err = cli("convert", "--help")
    assert code == 0 and err == "" and out.startswith("usage: ckpt-core convert") and "examples:" in out


HUGE_OPTIONS = [
    ("max_shard_size=" + "[" * 1000, "nests brackets 1000 deep"),
    ("max_shard_size=" + "{" * 17 + "}" * 17, "nests brackets 17 deep"),
    ("max_shard_size=" + "9" * 5000, "does not fit in 64 bits"),
    ("seed=" + "9" * 100, "does not fit in 64 bits"),
    ("rank=" + str(2 ** 63), "does not fit in 64 bits"),
    ("layer_map={1: " + "7" * 30 + "}", "does not fit in 64 bits"),
    ("layer_map=[1, " + "9" * 5000 + "]", "does not fit in 64 bits"),
    ("note=" + "x" * 10_001, "more than 10,000"),
]


@pytest.mark.parametrize("option, words", HUGE_OPTIONS, ids=lambda v: v[:30])
def test_option_values_past_the_bounds_are_usage_errors(cli, tmp_path, option, words):
    """Values no real option comes near (deep nesting, integers past 64 bits, huge text)
    are a one-line usage error before anything is read or written, not a RecursionError
    or a plugin's crash."""
    src = gpt_file(tmp_path)
    code, out, err = cli("convert", src, tmp_path / "out", "--to", "canonical", "--option", option)
    assert code == 2 and out == "" and err.count("\n") == 1 and words in err and len(err) < 300, err
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []


def test_option_values_within_the_bounds_still_parse():
    assert parse_value(str(2 ** 63 - 1)) == 2 ** 63 - 1 and parse_value(str(-2 ** 63)) == -2 ** 63
    assert parse_value("[" * 16 + "]" * 16) == [[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]
    assert parse_value("x" * 10_000) == "x" * 10_000
    assert parse_value("{12: 11}") == {12: 11} and parse_value("1e-3") == 0.001


def _safetensors(path: Path, header: dict | str, data: bytes) -> Path:
    import struct

    raw = header.encode() if isinstance(header, str) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


@pytest.mark.parametrize("shape", [[2 ** 63, 2 ** 63, 0], [0] * 40 + [2 ** 63 - 1], [1] * 100, [2] + [1] * 99],
                         ids=["zero-size-2**63", "zero-size-41-dims", "100-dims", "100-dims-2-elements"])
def test_extreme_but_legal_shapes_just_work(cli, tmp_path, shape):
    """Shapes numpy cannot hold (a dimension of 2**63 in an empty tensor, 100 dimensions)
    are legal safetensors: inspect, diff, and convert with --cast work on them."""
    numel = math.prod(shape)
    src = _safetensors(tmp_path / "odd.safetensors", {
        "odd": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4 * numel]},
        "w": {"dtype": "F32", "shape": [2], "data_offsets": [4 * numel, 4 * numel + 8]}},
        np.arange(numel + 2, dtype=np.float32).tobytes())
    code, out, err = cli("inspect", src)
    assert code == 0 and err == "", err
    assert cli("diff", src, src)[0] == 0
    code, out, err = cli("convert", src, tmp_path / "half.safetensors", "--to", "safetensors", "--cast", "F32=BF16")
    assert code == 0 and err == "", err
    half = ckpt_core.load(tmp_path / "half.safetensors")
    assert half.tensors["odd"].shape == tuple(shape) and half.tensors["odd"].dtype == "BF16"
    assert half.tensors["odd"].tobytes() == (np.arange(numel, dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    code, out, err = cli("diff", src, tmp_path / "half.safetensors", "--atol", "1")
    assert code == 0 and err == "", err


def test_a_lone_surrogate_name_is_corrupt_everywhere(cli, tmp_path):
    """A tensor named "\\ud800" is valid JSON but no UTF-8 spells it (the Rust safetensors
    refuses it): every command refuses the file in one line, before printing anything."""
    src = _safetensors(tmp_path / "odd.safetensors", '{"\\ud800": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                       '"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}', bytes(8))
    for argv in (["inspect", src], ["convert", src, tmp_path / "out", "--to", "canonical"], ["diff", src, src]):
        code, out, err = cli(*argv)
        assert code == 5 and out == "" and err.count("\n") == 1 and str(src) in err and "surrogate" in err, (argv, err)
    assert not (tmp_path / "out").exists() and leftovers(tmp_path) == []
    odd = Checkpoint(tensors={"\ud800": Tensor.from_bytes(bytes(4), "F32", (1,))})  # as a torch pickle may name one
    for fmt in ("safetensors", "canonical"):
        with pytest.raises(ckpt_core.CorruptInput, match="surrogate"):
            ckpt_core.save(odd, tmp_path / fmt, fmt)  # never a file no reader reads back
        assert not (tmp_path / fmt).exists() and leftovers(tmp_path) == []


def test_text_that_is_not_unicode_prints_escaped():
    """Whatever a reader lets through (a torch pickle may name a tensor with a lone
    surrogate), the real command prints it escaped instead of stopping half-way through the
    table with an encoding error (exit 10)."""
    script = """
from ckpt_core import Checkpoint, Tensor, api, cli
api.resolve_format = lambda path, name: "safetensors"
api.load = lambda path, name, options: Checkpoint(tensors={"\\ud800": Tensor.from_bytes(bytes(4), "F32", (1,)),
                                                           "b": Tensor.from_bytes(bytes(4), "F32", (1,))})
api.train_state = lambda path, name: None
cli.main(["inspect", "x"])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONIOENCODING": "utf-8", plugins.ENV_VAR: ""})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert [line.split()[0] for line in done.stdout.splitlines()[-2:]] == ["\\ud800", "b"], done.stdout
