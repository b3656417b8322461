"""Never lose data (issue 17, classes 1 to 3 and the FIFO hangs): built as classes, not
examples, through the real CLI (``cli.main``, and a subprocess for the exit code itself).

- The destination is each relation to the source (the source itself, a folder holding it,
  a path inside it, a link to it, a file its read uses) for every kind of checkpoint the
  installed formats read (``bad_input_cases.build_examples``: files, directories, run
  directories), the source reached directly, through a link and through a ``..`` path.
- ``--overwrite`` of each kind of path that is not a checkpoint (FIFO, character device
  made by the test, socket, a directory of other files, links to them).
- FIFOs in place of every file a reader opens, under a hang guard.
- ``prune`` of runs (moshi, mlx, DeepSpeed-style ``global_step_N``) with a linked
  checkpoints folder or linked checkpoints, and the run's own retention.

Each refusal asserts one line on stderr, the exit code, no traceback, and the whole tree
(every name, kind, link target and file digest, hidden names included) unchanged.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import attrs
import pytest
import yaml

import bad_input_cases as cases
from ckpt_core import api, cli
from ckpt_core.errors import CorruptInput, DestinationExists, DestinationIsSource, NotFound, UnknownFormat, UsageError

EXAMPLES = ["nanogpt", "modded-nanogpt", "lora-nanogpt", "peft", "peft:bin", "canonical", "safetensors",
            "safetensors:index", "mlx", "hf", "hf:bin", "swiftkv", "swiftkv:deepspeed", "moshi", *cases.new_formats()]
IS_SOURCE = DestinationIsSource.exit_code


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("examples")
    return root, cases.build_examples(root)


def example(built, name: str, into: Path) -> Path:
    """A copy of example ``name``'s folder under ``into``; the source's path in it."""
    root, made = built
    top = made[name].relative_to(root).parts[0]
    shutil.copytree(root / top, into / top, symlinks=True)
    return into / made[name].relative_to(root)


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (hidden ones too): its kind, link target or file digest."""
    found = {}
    for folder, dirs, names in os.walk(root):
        for name in dirs + names:
            p = Path(folder) / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                found[str(p.relative_to(root))] = f"link to {os.readlink(p)}"
            elif stat.S_ISREG(st.st_mode):
                found[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                found[str(p.relative_to(root))] = f"mode {stat.S_IFMT(st.st_mode):o}"
    return found


def cli_run(*argv) -> tuple[int, str, str]:
    """``ckpt-core ARGV`` in this process, under a hang guard: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), cases.time_limit(20, " ".join(map(str, argv))):
        try:
            cli.main([str(a) for a in argv])
        except SystemExit as e:
            return e.code, out.getvalue(), err.getvalue()
    raise AssertionError("cli.main returned without SystemExit")


def refused(root: Path, code: int, *argv, words: str = "") -> str:
    """Run ``argv``; assert it exits ``code`` with one error line holding ``words``, and that
    nothing under ``root`` changed. Returns the line."""
    before = snapshot(root)
    got, out, err = cli_run(*argv)
    assert got == code, f"{argv}: exit {got}, {err!r}"
    assert err.startswith("ckpt-core: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert words in err, err
    assert snapshot(root) == before, f"{argv} changed files on disk"
    return err


def spellings(src: Path, ws: Path) -> dict[str, Path]:
    """``src`` reached directly, through a link, and through a ``..`` path."""
    link = ws / "link-to-source"
    link.symlink_to(src)
    return {"direct": src, "link": link, "dotdot": src.parent / ".." / src.parent.name / src.name}


# -- class 1: the destination is, holds, or lies inside the source ---------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_no_destination_related_to_the_source_is_written(tmp_path, built, name):
    """For each spelling of the source and each relation of the destination to it, with and
    without --overwrite: exit 12, one line, every byte on disk as it was."""
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, name, ws)
    dst_link = ws / "link-to-destination"
    dst_link.symlink_to(src)
    for how, spelled in spellings(src, ws).items():
        relations = {"same": spelled, "folder holding it": spelled.parent, "workspace": ws,
                     "a link to it": dst_link}
        if src.is_dir():
            inner = next(p for p in sorted(src.rglob("*")) if p.is_file())
            relations |= {"new path inside": spelled / "sub", "deep inside": spelled / "sub" / "deeper",
                          "file inside": spelled / inner.relative_to(src), "dotdot inside": spelled / "x" / ".." / "sub"}
        for relation, dst in relations.items():
            for flags in (["--overwrite"], []):
                if relation == "deep inside" and not flags:
                    continue  # its parent does not exist: that is said first
                refused(ws, IS_SOURCE, "convert", spelled, dst, "--to", "canonical", *flags,
                        words="writing there would destroy what is being read")


def test_messages_name_the_relation(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, "canonical", ws)
    assert "is the source itself" in refused(ws, IS_SOURCE, "convert", src, src, "--to", "canonical", "--overwrite")
    assert "holds the source" in refused(ws, IS_SOURCE, "convert", src, src.parent, "--to", "canonical", "--overwrite")
    assert "lies inside the source" in refused(ws, IS_SOURCE, "convert", src, src / "sub", "--to", "canonical")


def test_a_file_onto_itself_with_a_cast_and_onto_a_hard_link(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, "safetensors", ws)
    refused(ws, IS_SOURCE, "convert", src, src, "--to", "safetensors", "--overwrite", "--cast", "F32=BF16")
    os.link(src, ws / "same-inode.safetensors")
    refused(ws, IS_SOURCE, "convert", src, ws / "same-inode.safetensors", "--to", "safetensors", "--overwrite",
            words="is the source itself")


def test_a_file_the_read_uses_is_never_a_destination(tmp_path, built):
    """Companions: an MLX step's state JSON and optimizer file, and a ``--option base=PATH``."""
    ws = tmp_path / "ws"
    ws.mkdir()
    run = example(built, "mlx", ws)
    step = run / "step_000002.safetensors"
    for companion in ("step_000002_state.json", "step_000002_optimizer.safetensors"):
        err = refused(ws, IS_SOURCE, "convert", step, run / companion, "--to", "safetensors", "--overwrite",
                      "--allow-loss", "train_state")
        assert f"{run / companion}, a file the read of {step} uses" in err
    base = example(built, "safetensors", ws)
    adapter = example(built, "peft", ws)
    refused(ws, IS_SOURCE, "convert", adapter, base, "--to", "safetensors", "--overwrite", "-o", f"base={base}",
            "--merge-adapters", words=f"is {base}, a file the read of {adapter} uses")
    refused(ws, IS_SOURCE, "convert", adapter, base.parent, "--to", "canonical", "--overwrite", "-o", f"base={base}",
            words=f"holds {base}, a file the read of {adapter} uses")


def test_the_api_save_refuses_the_files_its_tensors_are_read_from(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, "safetensors", ws)
    ck = api.load(src)
    before = snapshot(ws)
    with pytest.raises(DestinationIsSource):
        api.save(ck, src, "safetensors", overwrite=True)
    with pytest.raises(DestinationIsSource):
        api.save(ck, src.parent, "canonical", overwrite=True)
    assert snapshot(ws) == before


def test_the_exit_code_of_the_real_command(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = example(built, "mlx", ws)
    before = snapshot(ws)
    done = subprocess.run([sys.executable, "-m", "ckpt_core", "convert", run, run, "--to", "canonical", "--overwrite"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 12 and done.stderr.count("\n") == 1 and "is the source itself" in done.stderr
    assert snapshot(ws) == before
    help_text = subprocess.run([sys.executable, "-m", "ckpt_core", "--help"], capture_output=True, text=True).stdout
    assert "12   destination is source" in help_text


# -- class 2: --overwrite of what is not a checkpoint ----------------------------------------------


def non_checkpoints(ws: Path) -> dict[str, tuple[Path, str]]:
    """Paths that are not checkpoints, and the words the refusal must use for each."""
    made = {}
    os.mkfifo(ws / "fifo")
    made["fifo"] = (ws / "fifo", "is a FIFO")
    junk = ws / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("my notes")
    made["directory of other files"] = (junk, "holds files but no checkpoint")
    (ws / "link-to-fifo").symlink_to(ws / "fifo")
    made["link to a FIFO"] = (ws / "link-to-fifo", "is a FIFO")
    if os.geteuid() == 0:
        os.mknod(ws / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))  # what /dev/null is, made here
        made["character device"] = (ws / "null", "is a character device")
        os.mknod(ws / "block", stat.S_IFBLK | 0o600, os.makedev(7, 200))
        made["block device"] = (ws / "block", "is a block device")
    return made


@contextlib.contextmanager
def unix_socket():
    """A listening Unix socket in a short path (sun_path holds 108 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="ck-"))
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(str(folder / "s"))
        yield folder
    finally:
        sock.close()
        shutil.rmtree(folder)


def test_overwrite_refuses_what_is_not_a_checkpoint(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, "safetensors", ws)
    targets = non_checkpoints(ws)
    if os.geteuid() != 0:
        warnings.warn("not root: device nodes untested")
    for what, (dst, words) in targets.items():
        for to in ("safetensors", "canonical"):
            refused(ws, DestinationExists.exit_code, "convert", src, dst, "--to", to, "--overwrite", words=words)
    with unix_socket() as folder:
        refused(folder, DestinationExists.exit_code, "convert", src, folder / "s", "--to", "safetensors", "--overwrite",
                words="is a socket")


def test_overwrite_replaces_a_file_an_empty_directory_and_a_checkpoint(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, "safetensors", ws)
    (ws / "old.bin").write_bytes(b"old")
    (ws / "empty").mkdir()
    canon = example(built, "canonical", ws)
    for dst, to in ((ws / "old.bin", "safetensors"), (ws / "empty", "canonical"), (canon, "canonical")):
        code, _, err = cli_run("convert", src, dst, "--to", to, "--overwrite", "--quiet")
        assert code == 0, err
        assert api.detect(dst)[0].format == to


# -- readers open only regular files ---------------------------------------------------------------


@pytest.mark.parametrize("name", EXAMPLES)
def test_a_fifo_in_place_of_any_file_never_blocks(tmp_path, built, name):
    """Each file of each example replaced by a FIFO in turn: detect, inspect and convert
    finish (the hang guard fails the test otherwise) with success or one error line."""
    ws = tmp_path / "ws"
    ws.mkdir()
    src = example(built, name, ws)
    for f in cases.files_of(src.parent if src.is_file() else src):
        aside = f.with_name(f.name + ".aside")
        f.rename(aside)
        os.mkfifo(f)
        try:
            for argv in (["detect", src], ["inspect", src], ["convert", src, ws / "out", "--to", "canonical"]):
                code, _, err = cli_run(*argv)
                assert code in (0, NotFound.exit_code, UnknownFormat.exit_code, CorruptInput.exit_code), (f, argv, err)
                assert "Traceback" not in err and (code == 0 or err.count("\n") == 1), err
                if code == CorruptInput.exit_code and f == src:
                    assert "is a FIFO" in err, err
                shutil.rmtree(ws / "out", ignore_errors=True)
        finally:
            f.unlink()
            aside.rename(f)


def test_a_fifo_named_as_an_index_or_given_as_the_source_says_what_it_is(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    os.mkfifo(folder / "model.safetensors.index.json")
    code, _, err = cli_run("convert", folder, tmp_path / "out", "--to", "canonical")
    assert code in (UnknownFormat.exit_code, CorruptInput.exit_code) and err.count("\n") == 1, err
    code, _, err = cli_run("convert", folder, tmp_path / "out", "--to", "canonical", "--from", "safetensors")
    assert code == CorruptInput.exit_code and "model.safetensors.index.json: is a FIFO" in err, err
    os.mkfifo(tmp_path / "ckpt.pt")
    for fmt in ("nanogpt", "safetensors", "mlx", "lora-nanogpt"):
        code, _, err = cli_run("convert", tmp_path / "ckpt.pt", tmp_path / "out", "--to", "canonical", "--from", fmt)
        assert code != 0 and err.count("\n") == 1 and "no such file" not in err, (fmt, err)
    code, _, err = cli_run("convert", tmp_path / "ckpt.pt", tmp_path / "out", "--to", "canonical", "--from", "nanogpt")
    assert code == CorruptInput.exit_code and "ckpt.pt: is a FIFO" in err, err
    assert not (tmp_path / "out").exists()


# -- class 3: prune acts only inside the run directory ---------------------------------------------


def moshi_run(built, ws: Path, steps=(1, 2, 3), keep: object = "unset") -> Path:
    """The moshi example run with a checkpoint at each of ``steps`` (and ``num_ckpt_keep``)."""
    run = example(built, "moshi", ws)
    first = run / "checkpoints" / "checkpoint_000001"
    for step in steps[1:]:
        shutil.copytree(first, first.with_name(f"checkpoint_{step:06d}"))
    if keep != "unset":
        args = yaml.safe_load((run / "args.yaml").read_text())
        (run / "args.yaml").write_text(yaml.safe_dump({**args, "num_ckpt_keep": keep}))
    return run


def mlx_run(ws: Path, steps=(1, 2, 3)) -> Path:
    gpt = api.load(cases.NANOGPT_EXAMPLE)
    run = ws / "mlx-run"
    for step in steps:
        ck = gpt.evolve(train_state=attrs.evolve(gpt.train_state, step=step))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            api.save(ck, ws / "one", "mlx", allow_loss=["extra"])
        run.mkdir(exist_ok=True)
        for f in (ws / "one").iterdir():
            f.rename(run / f.name)
        (ws / "one").rmdir()
    return run


def deepspeed_run(built, ws: Path, steps=(10, 20, 30)) -> Path:
    """A DeepSpeed HF-engine run: ``global_step_N/`` model folders."""
    student = example(built, "swiftkv", ws)
    run = ws / "ds-run"
    run.mkdir()
    for step in steps:
        shutil.copytree(student, run / f"global_step_{step}")
    return run


def move_out(path: Path, outside: Path) -> None:
    """Move ``path`` to ``outside`` and leave a link to it in its place."""
    outside.parent.mkdir(parents=True, exist_ok=True)
    path.rename(outside)
    path.symlink_to(outside)


def pruned_with_warnings(ws: Path, run: Path, *argv) -> tuple[str, str]:
    code, out, err = cli_run("prune", run, *argv)
    assert code == 0 and "Traceback" not in err, err
    return out, err


def test_prune_never_deletes_through_a_linked_checkpoints_folder(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = moshi_run(built, ws, keep=1)
    move_out(run / "checkpoints", ws / "outside" / "checkpoints")
    before = snapshot(ws)
    for argv in (["--keep", "1"], ["--keep", "1", "--dry-run"], []):
        _, err = pruned_with_warnings(ws, run, *argv)
        assert err.count("not deleted") == 2 and "prune deletes only inside the run directory" in err, err
        assert snapshot(ws) == before


def test_prune_skips_linked_checkpoints_and_deletes_the_others(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = moshi_run(built, ws, steps=(1, 2, 3, 4))
    move_out(run / "checkpoints" / "checkpoint_000002", ws / "outside" / "checkpoint_000002")
    outside = snapshot(ws / "outside")
    _, err = pruned_with_warnings(ws, run, "--keep", "1")
    assert err.count("\n") == 1 and "checkpoint_000002: not deleted" in err, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_000002", "checkpoint_000004"]
    assert (run / "checkpoints" / "checkpoint_000002").is_symlink() and snapshot(ws / "outside") == outside


def test_prune_of_an_mlx_run_with_linked_step_files(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = mlx_run(ws)
    move_out(run / "step_000001.safetensors", ws / "outside" / "step_000001.safetensors")  # (a linked state file
    outside = snapshot(ws / "outside")  # makes mlx call the step incomplete: never pruned anyway)
    _, err = pruned_with_warnings(ws, run, "--keep", "1")
    assert "step_000001.safetensors: not deleted" in err, err
    assert snapshot(ws / "outside") == outside
    assert sorted(p.name for p in run.glob("step_000002*")) == []  # the step inside the run went
    assert (run / "step_000001.safetensors").is_symlink() and (run / "step_000001_state.json").is_file()


def test_prune_of_a_deepspeed_run_with_linked_step_folders(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = deepspeed_run(built, ws)
    move_out(run / "global_step_20", ws / "outside" / "global_step_20")
    outside = snapshot(ws / "outside")
    _, err = pruned_with_warnings(ws, run, "--keep", "1")
    assert "global_step_20: not deleted" in err, err
    assert sorted(p.name for p in run.iterdir()) == ["global_step_20", "global_step_30"]
    assert snapshot(ws / "outside") == outside


# -- the run's own retention -----------------------------------------------------------------------


def test_prune_without_keep_uses_the_runs_num_ckpt_keep_and_ls_shows_it(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = moshi_run(built, ws, steps=(1, 2, 3, 4), keep=2)
    code, out, err = cli_run("ls", run, "--json")
    listed = json.loads(out)
    assert code == 0 and listed["keep"] == 2, err
    assert [c["pruned"] for c in listed["checkpoints"]] == [True, True, False, False]
    code, out, _ = cli_run("ls", run)
    assert "prune keeps 2" in out and out.count(" delete ") == 2
    code, out, _ = cli_run("ls", run, "--keep", "3", "--json")
    assert [c["pruned"] for c in json.loads(out)["checkpoints"]] == [True, False, False, False]
    code, out, err = cli_run("prune", run)
    assert code == 0 and "deleted 2 checkpoints" in out, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_000003", "checkpoint_000004"]


def test_moshi_default_retention_and_a_bad_setting(tmp_path, built):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = moshi_run(built, ws, steps=(1, 2, 3, 4))  # args.yaml without num_ckpt_keep: moshi-finetune keeps 3
    assert api.retention(run) == 3
    (run / "args.yaml").write_text(yaml.safe_dump({"num_ckpt_keep": "all"}))
    refused(ws, CorruptInput.exit_code, "prune", run, words="num_ckpt_keep is 'all'")
    (run / "args.yaml").unlink()
    refused(ws, UsageError.exit_code, "prune", run, words="pass --keep N")


def test_prune_without_keep_where_the_run_records_none_is_one_usage_line(tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    run = mlx_run(ws)
    err = refused(ws, UsageError.exit_code, "prune", run, words="records no retention")
    assert "--keep" in err and "usage:" not in err
    code, out, _ = cli_run("ls", run, "--json")
    assert code == 0 and all(c["pruned"] is None for c in json.loads(out)["checkpoints"])
