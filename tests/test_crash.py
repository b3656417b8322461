"""Crash safety: ckpt-core operations SIGKILLed at random instants, and a full disk.

Each operation runs in a subprocess (``tests/crash_worker.py``) that prints ``ready`` once
its imports and plugins are loaded, and ``done`` after the operation. An uninterrupted run
first gives the operation's duration (from ``ready`` to ``done``) and its result; then fresh copies of the same setup run
again and are killed with SIGKILL at seeded-random fractions of that duration, 0 and past
the end included. After every kill:

- the destination is absent, or complete and equal to the uninterrupted result
  (``compare.differences`` empty, and byte for byte where the writer is deterministic); an
  overwritten destination is the old one or the new one, never neither; in a run directory
  every listed checkpoint is complete and ``latest`` names a complete one;
- the source's bytes are unchanged;
- what the killed process left (hidden temporaries named after it) is never taken for a
  checkpoint: ``detect`` / ``load`` of the parent directory, ``ls`` / ``latest`` of a run;
- a normal run to the same destination then succeeds and removes those leftovers.

Operations: ``ckpt-core convert`` to canonical, safetensors, mlx, nanogpt (a torch
pickle), dcp and every other installed format (with each of its ``FormatSpec.write_options``
where it needs options to take the source), ``ckpt_core.save`` to a sharded safetensors directory (two shards written at once), ``--overwrite`` of a file
and of a directory, a new step saved into an MLX run directory, and ``ckpt-core prune``.

A full disk (a 2 MB tmpfs where this process may mount one, and everywhere a write that
raises ENOSPC part way) must end in one ``DiskFull`` line (exit 11) and leave nothing.

CKPT_CORE_CRASH_SEED picks other kill instants (default 0).
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bad_input_cases as cases
import ckpt_core
from ckpt_core import atomic, cli, safetensors_io
from ckpt_core.compare import differences
from ckpt_core.errors import CkptError, DiskFull
from ckpt_core.model import Checkpoint, TrainState
from ckpt_core.plugins import registry
from ckpt_core.tensor import Tensor

WORKER = Path(__file__).with_name("crash_worker.py")
SEED = int(os.environ.get("CKPT_CORE_CRASH_SEED", "0"))
HANG = 120  # seconds; a guard against a hung child, never a timing assertion
MIN_KILLS = 50


def _worker_module():
    spec = importlib.util.spec_from_file_location("crash_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


save_step = _worker_module().save_step  # the same step save the killed workers run, here uninterrupted


# -- sources ----------------------------------------------------------------------------------


def gpt_tensors(seed: int, d: int = 448) -> dict[str, Tensor]:
    """A nanoGPT-named model in 29 tensors, about 23 MB at width ``d`` 448 (the ``gpt`` family:
    every writer takes it)."""
    vocab, block, layers = 2048, 256, 2
    rng = np.random.default_rng(seed)

    def w(*shape):
        return Tensor.from_numpy((rng.standard_normal(shape) * 0.02).astype(np.float32))

    sd = {"transformer.wte.weight": w(vocab, d), "transformer.wpe.weight": w(block, d)}
    for i in range(layers):
        h = f"transformer.h.{i}."
        sd |= {h + "ln_1.weight": w(d), h + "ln_1.bias": w(d), h + "attn.c_attn.weight": w(3 * d, d),
               h + "attn.c_attn.bias": w(3 * d), h + "attn.c_proj.weight": w(d, d), h + "attn.c_proj.bias": w(d),
               h + "ln_2.weight": w(d), h + "ln_2.bias": w(d), h + "mlp.c_fc.weight": w(4 * d, d),
               h + "mlp.c_fc.bias": w(4 * d), h + "mlp.c_proj.weight": w(d, 4 * d), h + "mlp.c_proj.bias": w(d)}
    return sd | {"transformer.ln_f.weight": w(d), "transformer.ln_f.bias": w(d), "lm_head.weight": w(vocab, d)}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """``new``: the checkpoint every operation writes; ``old``: a different one to overwrite;
    ``small``: 1.5 MB, for the steps of a run that is pruned (deleting takes no longer for
    larger files: their data is never touched)."""
    directory = tmp_path_factory.mktemp("crash-sources")
    out = {}
    for name, seed, d in (("new", 0, 448), ("old", 1, 448), ("small", 2, 64)):
        out[name] = directory / f"{name}.safetensors"
        safetensors_io.write_file(out[name], gpt_tensors(seed, d))
    return out


@pytest.fixture(scope="module")
def kill_log():
    """Kills sent per operation; once the module is done, at least MIN_KILLS in all (when every
    kill test ran: a -k selection of some of them checks only their own counts)."""
    log: dict[str, dict[str, int]] = {}
    yield log
    if set(log) >= set(ALL_OPERATIONS):
        total = sum(entry["sent"] for entry in log.values())
        summary = ", ".join(f"{op}: {e['sent']} sent, {e['landed']} before exit" for op, e in sorted(log.items()))
        print(f"\ncrash kills (seed {SEED}): {total} in all; {summary}")
        assert total >= MIN_KILLS, summary


# -- running and killing the worker -----------------------------------------------------------


def start(*args) -> subprocess.Popen:
    """The worker running ``args``, past its ``ready`` line."""
    child = subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    line = child.stdout.readline()
    if line != "ready\n":
        out, err = child.communicate(timeout=HANG)
        raise AssertionError(f"the worker did not start: {line}{out}{err}")
    return child


def measure(*args) -> float:
    """Seconds from ``ready`` to ``done`` of an uninterrupted run (which must succeed)."""
    child = start(*args)
    began = time.monotonic()
    for line in child.stdout:
        if line == "done\n":
            break
    elapsed = time.monotonic() - began
    _, err = child.communicate(timeout=HANG)
    assert child.returncode == 0, err
    return elapsed


def run_and_kill(delay: float, *args) -> tuple[int, bool]:
    """Run the worker and SIGKILL it ``delay`` seconds after ``ready``: (its pid, whether the
    kill landed before it finished)."""
    child = start(*args)
    try:
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)  # a no-op once it has exited
        _, err = child.communicate(timeout=HANG)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    assert child.returncode in (0, -signal.SIGKILL), err
    return child.pid, child.returncode == -signal.SIGKILL


def kill_instants(count: int, operation: str, duration: float) -> list[float]:
    """``count`` delays spread over ``duration``: 0, one random instant in each of ``count - 2``
    equal slices, and one past the end."""
    rng = random.Random(f"{SEED}:{operation}")
    inner = [(i + rng.random()) / (count - 2) for i in range(count - 2)]
    return [f * duration for f in (0.0, *inner, 1.5)]


def record(kill_log, operation: str, landed: list[bool]) -> None:
    """Log the kills sent for ``operation``; the one at instant 0 must have found it running."""
    kill_log[operation] = {"sent": len(landed), "landed": sum(landed)}
    assert landed[0], f"{operation}: the kill at instant 0 came after the operation had finished"


# -- what is on disk --------------------------------------------------------------------------


def digests(path: Path, skip_hidden: bool = False) -> dict[str, str]:
    """sha256 of a file (key ""), or of every file under a directory by relative path (but
    those under hidden names, with ``skip_hidden``: what a killed writer left)."""
    if path.is_file():
        return {"": sha256(path)}
    return {str(p.relative_to(path)): sha256(p) for p in sorted(path.rglob("*"))
            if p.is_file() and not (skip_hidden and any(part.startswith(".") for part in p.relative_to(path).parts))}


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def link_copy(src: Path, dst: Path) -> None:
    """A copy of a file or tree made of hard links: instant, and any write in place into the
    copy would show in the original's digests."""
    if src.is_dir():
        shutil.copytree(src, dst, copy_function=os.link)
    else:
        os.link(src, dst)


def assert_leftovers_are_temporaries(folder: Path, pid: int, names: list[str]) -> None:
    """Every hidden name in ``folder`` is the killed writer's temporary for one of ``names``,
    named with this host and its process id (so that only this host sweeps it)."""
    pattern = re.compile(rf"\.({'|'.join(map(re.escape, names))})\.(tmp|old)-{re.escape(atomic.HOST)}-{pid}-[0-9a-f]{{8}}")
    assert all(pattern.fullmatch(name) for name in hidden(folder)), hidden(folder)


def assert_nothing_hidden_is_read(folder: Path, allowed: list[Checkpoint]) -> None:
    """``detect`` / ``load`` of ``folder`` see no leftover: whatever loads is one of ``allowed``."""
    for found in ckpt_core.detect(folder):
        try:
            ck = ckpt_core.load(folder, found.format)
        except CkptError:
            continue
        assert any(not differences(ck, a) for a in allowed), f"{folder} read as {found.format}: {found.reason}"


def assert_run_is_sound(run: Path) -> ckpt_core.RunEntry:
    """Every checkpoint ``ls`` lists is complete and visible; return ``latest``."""
    _, entries = ckpt_core.list_checkpoints(run)
    for e in entries:
        assert e.complete, f"{e.path}: listed but incomplete ({e.note})"
        assert not any(part.startswith(".") for p in (e.path, *e.paths) for part in p.relative_to(run).parts), e
    newest = ckpt_core.latest(run)
    assert newest.complete
    assert cli_run(["latest", str(run)])[:2] == (0, f"{newest.path}\n")
    return newest


# -- convert and save to a new destination ---------------------------------------------------

# (operation, worker arguments before SRC DST, target format, destination name, kills, byte-exact, writer options)
CONVERTS = [
    ("convert-canonical", ("cli", "convert"), "canonical", "out", 7, True, {}),
    ("convert-safetensors", ("cli", "convert"), "safetensors", "out.safetensors", 7, True, {}),
    ("convert-mlx", ("cli", "convert"), "mlx", "run", 6, True, {}),
    ("save-api-sharded", ("save",), "safetensors", "sharded", 7, True, {}),
    # torch's zip writer is not byte-stable; torch is imported before ``ready`` (start-up, not the write)
    ("convert-nanogpt", ("--import-torch", "cli", "convert"), "nanogpt", "ckpt.pt", 3, False, {}),
    ("convert-dcp", ("--import-torch", "cli", "convert"), "dcp", "step-1", 3, False, {}),
]
# every other installed format that holds the source (a new plugin's): its own writer, compared by content;
# a writer that needs options to take it (``FormatSpec.write_options``) once with each set
CONVERTS += [(f"convert-{fmt}", ("cli", "convert"), fmt, "out", 3, False, {}) for fmt in cases.new_formats()
             if registry().spec(fmt).holds_family("gpt")]
CONVERTS += [(f"convert-{fmt}[{','.join(f'{k}={v}' for k, v in options.items())}]", ("cli", "convert"), fmt, "out", 3,
              False, options) for fmt, spec in sorted(registry().formats.items()) if spec.holds_family("gpt")
             for options in spec.write_options]
SHARDED = {"options": {"max_shard_size": "8MB"}, "workers": 2}  # shards written two at once (``pool``)


def worker_args(prefix: tuple[str, ...], src: Path, dst: Path, target: str, options: dict) -> list[str]:
    if prefix == ("save",):
        return ["save", str(src), str(dst), target, json.dumps(SHARDED)]
    flags = [f for k, v in options.items() for f in ("--option", f"{k}={json.dumps(v)}")]
    return [*prefix, str(src), str(dst), "--to", target, *flags, "--quiet"]


@pytest.mark.parametrize("operation, prefix, target, name, kills, exact, options", CONVERTS, ids=[c[0] for c in CONVERTS])
def test_crash_convert_or_save_killed_at_random_instants(tmp_path, sources, kill_log, operation, prefix, target,
                                                         name, kills, exact, options):
    """A new destination, killed while written: absent or complete, never partial or read."""
    landed = kill_while_writing(tmp_path, sources["new"], operation, prefix, target, name, kills, exact, options)
    record(kill_log, operation, landed)


def kill_while_writing(tmp_path: Path, src: Path, operation: str, prefix: tuple[str, ...], target: str, name: str,
                       kills: int, exact: bool, options: dict) -> list[bool]:
    """Write ``src`` to a new destination ``name`` uninterrupted, then ``kills`` times killed
    at random instants, checking each outcome; whether each kill landed before the exit."""
    before = digests(src)
    ref = tmp_path / "ref" / name
    ref.parent.mkdir()
    duration = measure(*worker_args(prefix, src, ref, target, options))
    expected, expected_files = ckpt_core.load(ref), digests(ref)
    again = {"overwrite": True, **(SHARDED if prefix == ("save",) else {"options": options})}

    landed, outcomes = [], {"absent": 0, "complete": 0, "temporary left": 0}
    for i, delay in enumerate(kill_instants(kills, operation, duration)):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        dst = work / name
        pid, killed = run_and_kill(delay, *worker_args(prefix, src, dst, target, options))
        landed.append(killed)
        outcomes["temporary left"] += bool(hidden(work))
        assert digests(src) == before, "the source was modified"
        if exists(dst):
            outcomes["complete"] += 1
            assert not differences(ckpt_core.load(dst), expected)
            if exact:
                assert digests(dst) == expected_files
            if target == "mlx":
                assert_run_is_sound(dst)
        else:
            outcomes["absent"] += 1
        assert_leftovers_are_temporaries(work, pid, [name])
        assert_nothing_hidden_is_read(work, [expected])
        # a normal run afterwards succeeds and sweeps the killed writer's temporary
        ckpt_core.save(ckpt_core.load(src), dst, target, **again)
        assert hidden(work) == []
        if exact:
            assert digests(dst) == expected_files
        else:
            assert not differences(ckpt_core.load(dst), expected)
    print(f"{operation}: {kills} kills over {duration:.3f}s, {sum(landed)} before exit; left {outcomes}")
    return landed


# -- overwrite ---------------------------------------------------------------------------------

OVERWRITES = [("overwrite-file", "safetensors", "out.safetensors", 5), ("overwrite-dir", "canonical", "out", 5)]


@pytest.mark.parametrize("operation, target, name, kills", OVERWRITES, ids=[o[0] for o in OVERWRITES])
def test_crash_overwrite_killed_leaves_the_old_or_the_new(tmp_path, sources, kill_log, operation, target, name, kills):
    """``--overwrite`` killed at any instant: the old destination or the new one, whole."""
    src = sources["new"]
    before = digests(src)
    old, new = tmp_path / "old" / name, tmp_path / "new" / name
    for path, source in ((old, sources["old"]), (new, src)):
        path.parent.mkdir()
        ckpt_core.convert(source, path, to=target)
    versions = {"old": (ckpt_core.load(old), digests(old)), "new": (ckpt_core.load(new), digests(new))}

    def fresh(work: str) -> Path:
        (tmp_path / work).mkdir()
        dst = tmp_path / work / name
        link_copy(old, dst)
        return dst

    def args(dst: Path) -> list[str]:
        return ["cli", "convert", str(src), str(dst), "--to", target, "--overwrite", "--quiet"]

    dst = fresh("measured")
    duration = measure(*args(dst))
    assert digests(dst) == versions["new"][1]

    landed, outcomes = [], {"old": 0, "new": 0, "temporary left": 0}
    for i, delay in enumerate(kill_instants(kills, operation, duration)):
        dst = fresh(f"kill{i}")
        pid, killed = run_and_kill(delay, *args(dst))
        landed.append(killed)
        outcomes["temporary left"] += bool(hidden(dst.parent))
        assert digests(src) == before, "the source was modified"
        assert exists(dst), "an overwrite killed part way left no destination at all"
        now = digests(dst)
        which = [v for v, (_, files) in versions.items() if now == files]
        assert len(which) == 1, "the destination is neither the old nor the new one"
        outcomes[which[0]] += 1
        assert not differences(ckpt_core.load(dst), versions[which[0]][0])
        assert_leftovers_are_temporaries(dst.parent, pid, [name])
        assert_nothing_hidden_is_read(dst.parent, [versions[which[0]][0]])
        ckpt_core.convert(src, dst, to=target, overwrite=True)
        assert digests(dst) == versions["new"][1] and hidden(dst.parent) == []
    assert digests(old) == versions["old"][1], "the old destination's files were written in place"
    record(kill_log, operation, landed)
    print(f"{operation}: {kills} kills over {duration:.3f}s, {sum(landed)} before exit; left {outcomes}")


# -- run directories ----------------------------------------------------------------------------


def stepped(src: Path, step: int) -> Checkpoint:
    """``src`` with a training state at ``step``."""
    ck = ckpt_core.load(src)
    return ck.evolve(train_state=TrainState(step=step, epoch=0, metrics={"loss": 2.5}))


def mlx_run(path: Path, src: Path, steps: list[int]) -> None:
    """An MLX run directory with a checkpoint at each step (the first written by ckpt-core's
    mlx writer, the others as a training loop saves them)."""
    ckpt_core.save(stepped(src, steps[0]), path, "mlx")
    for step in steps[1:]:
        save_step(path, src, step)


def test_crash_new_step_in_mlx_run_killed(tmp_path, sources, kill_log):
    """A step saved into a run, killed: earlier steps untouched, ``latest`` the previous step
    or the new one whole, never a half-saved one; saving again completes it."""
    src = sources["new"]
    before = digests(src)
    template = tmp_path / "template"
    mlx_run(template, src, [100, 200])
    old_files, old_ck = digests(template), ckpt_core.load(template)
    ref = tmp_path / "ref"
    link_copy(template, ref)
    duration = measure("step", ref, src, 300)
    new_ck, new_files = ckpt_core.load(ref), digests(ref)
    step_files = ["step_000300.safetensors", "step_000300_state.json"]

    landed, outcomes = [], {"latest 200": 0, "latest 300": 0, "step 300 incomplete": 0, "temporary left": 0}
    kills = 6
    for i, delay in enumerate(kill_instants(kills, "new-step-mlx", duration)):
        run = tmp_path / f"kill{i}"
        link_copy(template, run)
        pid, killed = run_and_kill(delay, "step", run, src, 300)
        landed.append(killed)
        outcomes["temporary left"] += bool(hidden(run))
        assert digests(src) == before, "the source was modified"
        now = digests(run, skip_hidden=True)
        assert {k: v for k, v in now.items() if k in old_files} == old_files, "an earlier step changed"
        assert all(now[k] == new_files[k] for k in now if k not in old_files), "a step file differs from an uninterrupted save"
        _, entries = ckpt_core.list_checkpoints(run)
        assert [e.step for e in entries if e.step != 300] == [100, 200] and all(e.complete for e in entries if e.step != 300)
        assert not any(p.name.startswith(".") for e in entries for p in (e.path, *e.paths))
        newest = ckpt_core.latest(run)
        assert newest.complete and newest.step in (200, 300)
        assert cli_run(["latest", str(run)])[:2] == (0, f"{newest.path}\n")
        outcomes[f"latest {newest.step}"] += 1
        outcomes["step 300 incomplete"] += any(e.step == 300 and not e.complete for e in entries)
        assert not differences(ckpt_core.load(run), new_ck if newest.step == 300 else old_ck)
        assert_leftovers_are_temporaries(run, pid, step_files)
        if i % 2:  # a prune sweeps the killed writer's temporaries too (keeping every checkpoint)
            ckpt_core.prune(run, 10)
            assert hidden(run) == [] and digests(run) == now
        save_step(run, src, 300)  # the training loop, restarted, saves the step again
        assert digests(run) == new_files and hidden(run) == []
        assert ckpt_core.latest(run).step == 300
    record(kill_log, "new-step-mlx", landed)
    print(f"new-step-mlx: {kills} kills over {duration:.3f}s, {sum(landed)} before exit; {outcomes}")


def test_crash_prune_killed_keeps_latest_and_lists_only_complete(tmp_path, sources, kill_log):
    """``prune --keep 2`` killed: nothing it keeps is touched, ``latest`` is unchanged, every
    listed checkpoint is complete; the next prune leaves exactly what an uninterrupted one does."""
    template = tmp_path / "template"
    mlx_run(template, sources["small"], [100, 200, 300, 400, 500])
    (template / "best").mkdir()
    for p in template.glob("step_000200*"):
        os.link(p, template / "best" / p.name)
    files = digests(template)
    ref = tmp_path / "ref"
    link_copy(template, ref)
    latest_before = ckpt_core.latest(template).path.name
    duration = measure("cli", "prune", ref, "--keep", "2", "--quiet")
    kept = digests(ref)
    kept_steps = [e.step for e in ckpt_core.list_checkpoints(ref)[1]]
    assert sorted(kept) == sorted(k for k in files if "step_000100" not in k and not k.startswith(("step_000200", "step_000300")))

    landed, outcomes = [], {"untouched": 0, "part pruned": 0, "pruned": 0, "half-deleted, not listed": 0}
    kills = 8
    for i, delay in enumerate(kill_instants(kills, "prune", duration)):
        run = tmp_path / f"kill{i}"
        link_copy(template, run)
        _, killed = run_and_kill(delay, "cli", "prune", run, "--keep", "2", "--quiet")
        landed.append(killed)
        now = digests(run, skip_hidden=True)
        assert all(now[k] == files[k] for k in now), "a file changed"
        assert all(k in now for k in kept), "a checkpoint that prune keeps was deleted"
        newest = assert_run_is_sound(run)
        assert newest.path.name == latest_before and ckpt_core.load(run).train_state.step == 500
        entries = ckpt_core.list_checkpoints(run)[1]
        assert set(kept_steps) <= {e.step for e in entries}
        visible = {p.name for p in run.iterdir() if not p.name.startswith(".") and p.is_file()}
        outcomes["half-deleted, not listed"] += bool(visible - {p.name for e in entries for p in e.paths})
        outcomes["untouched" if now == files else "pruned" if now == kept else "part pruned"] += 1
        assert all(re.fullmatch(r"\..+\.deleting-[0-9a-f]{8}", n) for n in hidden(run)), hidden(run)
        ckpt_core.prune(run, 2)  # the next prune finishes the job
        assert digests(run) == kept and hidden(run) == [] and hidden(run / "best") == []
    record(kill_log, "prune", landed)
    print(f"prune: {kills} kills over {duration:.3f}s, {sum(landed)} before exit; {outcomes}")


ALL_OPERATIONS = [c[0] for c in CONVERTS] + [o[0] for o in OVERWRITES] + ["new-step-mlx", "prune"]


def test_crash_prune_finishes_what_killed_prunes_left(tmp_path, sources):
    """What a prune killed between the renames of one checkpoint's files leaves (its weights
    hidden, its state JSON still there) is neither listed nor latest; the next prune removes
    it, the hidden leftovers of killed prunes and the temporaries of dead writers on this
    host, but no temporary of a live writer or of another host's (a process id means nothing
    on another host of a shared filesystem)."""
    run = tmp_path / "run"
    mlx_run(run, sources["small"], [100, 200, 300])
    (run / "step_000100.safetensors").rename(run / ".step_000100.safetensors.deleting-0123abcd")
    (run / "step_000200_state.json").rename(run / ".step_000200_state.json.deleting-4567cdef")  # both hidden,
    (run / "step_000200.safetensors").unlink()  # one removed
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)
    killed = f".step_000400.safetensors.tmp-{atomic.HOST}-{dead}-89abcdef"  # a dead writer here: removed
    writing = f".step_000400.safetensors.tmp-{atomic.HOST}x-{dead}-89abcdef"  # another host's: kept
    live = f".step_000500.safetensors.tmp-{atomic.HOST}-{os.getpid()}-89abcdef"  # a live writer: kept
    for name in (killed, writing, live):
        (run / name).mkdir()
        (run / name / "step_000400.safetensors").write_bytes(b"half")

    assert [e.step for e in ckpt_core.list_checkpoints(run)[1]] == [300]
    code, out, _ = cli_run(["ls", str(run)])
    assert code == 0 and "step_000100" not in out and "step_000300" in out
    ckpt_core.prune(run, 1)
    assert sorted(p.name for p in run.iterdir()) == sorted([writing, live, "step_000300.safetensors", "step_000300_state.json"])


# -- a full disk ----------------------------------------------------------------------------------

FULL_DISK_TARGETS = [("canonical", "out"), ("safetensors", "out.safetensors"), ("mlx", "run"), ("nanogpt", "ckpt.pt")]


def cli_run(argv: list[str]) -> tuple[int, str, str]:
    """``ckpt-core ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    stdout, stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        cli.main(argv)
    except SystemExit as e:
        return e.code, out.getvalue(), err.getvalue()
    finally:
        sys.stdout, sys.stderr = stdout, stderr
    raise AssertionError("cli.main returned without SystemExit")


def assert_disk_full_reported(code: int, err: str, dst: Path) -> None:
    assert code == DiskFull.exit_code == 11, err
    assert err == f"ckpt-core: error: no space left on device writing {dst}; nothing was written (free some space and retry)\n"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 2 MB tmpfs (root only, where mounting works); unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "full"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.mark.parametrize("target, name", FULL_DISK_TARGETS, ids=[t for t, _ in FULL_DISK_TARGETS])
def test_crash_full_tmpfs_is_a_clean_error_and_leaves_nothing(small_tmpfs, sources, target, name):
    """A 23 MB conversion onto a 2 MB filesystem: DiskFull (CLI: one line, exit 11), nothing left."""
    src = sources["new"]
    dst = small_tmpfs / name
    done = subprocess.run([sys.executable, "-m", "ckpt_core", "convert", str(src), str(dst), "--to", target],
                          capture_output=True, text=True, timeout=HANG)
    assert_disk_full_reported(done.returncode, done.stderr, dst)
    assert os.listdir(small_tmpfs) == []
    with pytest.raises(DiskFull, match="no space left on device writing"):
        ckpt_core.convert(src, dst, to=target)
    assert os.listdir(small_tmpfs) == []


def test_crash_full_tmpfs_keeps_the_destination_it_was_to_overwrite(small_tmpfs, sources, tmp_path):
    """An overwrite that fills the disk keeps the old destination as it was."""
    small = tmp_path / "small.safetensors"
    safetensors_io.write_file(small, {"w": Tensor.from_numpy(np.arange(1000, dtype=np.float32))})
    dst = small_tmpfs / "out.safetensors"
    shutil.copyfile(small, dst)
    code, _, err = cli_run(["convert", str(sources["new"]), str(dst), "--to", "safetensors", "--overwrite"])
    assert_disk_full_reported(code, err, dst)
    assert dst.read_bytes() == small.read_bytes() and os.listdir(small_tmpfs) == ["out.safetensors"]


class _FillingFile:
    """A file whose writes fail with ENOSPC once ``budget`` bytes are spent (shared with the
    patched ``os.copy_file_range``), as on a disk that fills while the write goes on."""

    def __init__(self, f, budget: list[int]):
        self._f, self._budget = f, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        _spend(self._budget, n)
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._f.__exit__(*exc)


def _spend(budget: list[int], n: int) -> None:
    if n > budget[0]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    budget[0] -= n


@pytest.mark.parametrize("target, name", FULL_DISK_TARGETS[:3], ids=[t for t, _ in FULL_DISK_TARGETS[:3]])
@pytest.mark.parametrize("budget", [0, 5_000_000])
def test_crash_write_failing_with_enospc_is_a_clean_error_and_leaves_nothing(monkeypatch, tmp_path, sources, target,
                                                                             name, budget):
    """Where no tmpfs can be mounted: the writers' own writes (files opened by the safetensors
    writer, and its kernel-side copies) fail with ENOSPC after ``budget`` bytes."""
    left = [budget]
    real_open, real_copy = open, os.copy_file_range

    def filling_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return _FillingFile(f, left) if "x" in mode or "w" in mode else f

    def filling_copy(src, dst, count, offset_src=None, *args):
        done = real_copy(src, dst, count, offset_src, *args)
        _spend(left, done)
        return done

    monkeypatch.setattr(safetensors_io, "open", filling_open, raising=False)
    monkeypatch.setattr(os, "copy_file_range", filling_copy)
    work = tmp_path / "work"
    work.mkdir()
    dst = work / name
    code, _, err = cli_run(["convert", str(sources["new"]), str(dst), "--to", target])
    assert_disk_full_reported(code, err, dst)
    assert os.listdir(work) == []
    left[0] = budget
    with pytest.raises(DiskFull):
        ckpt_core.save(ckpt_core.load(sources["new"]), dst, target)
    assert os.listdir(work) == []
