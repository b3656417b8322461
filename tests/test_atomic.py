"""Atomic output: a destination is either as it was or complete, never half-written."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ckpt_core import atomic, safetensors_io
from ckpt_core.atomic import atomic_output
from ckpt_core.errors import DestinationExists, DiskFull, NotFound, PluginError
from ckpt_core.tensor import Tensor


def siblings(dst: Path) -> list[str]:
    """Hidden temporaries (or leftovers) that atomic_output made beside ``dst``."""
    return sorted(p.name for p in dst.parent.iterdir() if p.name.startswith(f".{dst.name}."))


def tree(path: Path) -> dict[str, bytes] | bytes:
    """A file's bytes, or a directory's {relative path: bytes}."""
    if path.is_file():
        return path.read_bytes()
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def make_dir(path: Path, content: dict[str, bytes]) -> None:
    path.mkdir()
    for name, data in content.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)


def test_creates_a_file(tmp_path):
    dst = tmp_path / "out.safetensors"
    with atomic_output(dst) as tmp:
        # the writer sees the destination's own name (writers go by it), in a hidden sibling
        assert tmp.name == dst.name and tmp.parent.parent == dst.parent
        assert tmp.parent.name.startswith(".out.safetensors.tmp-")
        assert not dst.exists()
        tmp.write_bytes(b"new")
        assert not dst.exists()  # nothing appears before the block ends
    assert dst.read_bytes() == b"new"
    assert siblings(dst) == []


def test_creates_a_directory(tmp_path):
    dst = tmp_path / "out"
    with atomic_output(str(dst)) as tmp:
        make_dir(tmp, {"a.bin": b"a", "sub/b.bin": b"b"})
    assert tree(dst) == {"a.bin": b"a", "sub/b.bin": b"b"}
    assert siblings(dst) == []


@pytest.mark.parametrize("existing", ["file", "dir", "dangling-link"])
def test_refuses_an_existing_destination(tmp_path, existing):
    dst = tmp_path / "out"
    if existing == "file":
        dst.write_bytes(b"old")
    elif existing == "dir":
        make_dir(dst, {"x": b"old"})
    else:
        dst.symlink_to(tmp_path / "nowhere")
    ran = []
    with pytest.raises(DestinationExists, match="--overwrite"):
        with atomic_output(dst) as tmp:
            ran.append(tmp)
    assert not ran, "the writer must not run at all"
    if existing == "file":
        assert dst.read_bytes() == b"old"
    elif existing == "dir":
        assert tree(dst) == {"x": b"old"}
    else:
        assert dst.is_symlink()
    assert siblings(dst) == []


@pytest.mark.parametrize("old, new", [("file", "file"), ("dir", "dir"), ("file", "dir"), ("dir", "file")])
def test_overwrite_replaces(tmp_path, old, new):
    dst = tmp_path / "out"
    if old == "file":
        dst.write_bytes(b"old")
    else:
        make_dir(dst, {"old.bin": b"old", "sub/x": b"x"})
    with atomic_output(dst, overwrite=True) as tmp:
        if new == "file":
            tmp.write_bytes(b"new")
        else:
            make_dir(tmp, {"new.bin": b"new"})
    assert tree(dst) == (b"new" if new == "file" else {"new.bin": b"new"})
    assert siblings(dst) == []


def test_overwrite_of_nothing_just_creates(tmp_path):
    dst = tmp_path / "out"
    with atomic_output(dst, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"


@pytest.mark.parametrize("old", [None, "file", "dir"])
@pytest.mark.parametrize("new", ["file", "dir"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_a_failure_inside_leaves_the_destination_untouched(tmp_path, old, new, error):
    dst = tmp_path / "out"
    if old == "file":
        dst.write_bytes(b"old")
    elif old == "dir":
        make_dir(dst, {"old.bin": b"old"})
    before = tree(dst) if old else None
    with pytest.raises(error):
        with atomic_output(dst, overwrite=True) as tmp:
            if new == "file":
                tmp.write_bytes(b"half")
            else:
                make_dir(tmp, {"half.bin": b"half"})
            raise error("writer failed")
    if old is None:
        assert not dst.exists()
    else:
        assert tree(dst) == before
    assert siblings(dst) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == (["out"] if old else [])


def test_missing_parent_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="no such directory"):
        with atomic_output(tmp_path / "no" / "such" / "out"):
            pass


def test_a_writer_that_writes_nothing_is_a_plugin_error(tmp_path):
    dst = tmp_path / "out"
    with pytest.raises(PluginError, match="produced nothing"):
        with atomic_output(dst):
            pass
    assert not dst.exists() and siblings(dst) == []
    dst.write_bytes(b"old")
    with pytest.raises(PluginError):
        with atomic_output(dst, overwrite=True):
            pass
    assert dst.read_bytes() == b"old"


@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded")])
def test_a_full_disk_is_disk_full_naming_the_destination(tmp_path, code, words):
    dst = tmp_path / "out"
    with pytest.raises(DiskFull) as caught:
        with atomic_output(dst) as tmp:
            make_dir(tmp, {"a.bin": b"part"})
            raise OSError(code, os.strerror(code))  # what a writer's write() raises on a full disk
    assert str(caught.value) == f"{words} writing {dst}; nothing was written (free some space and retry)"
    assert caught.value.exit_code == 11
    assert os.listdir(tmp_path) == []


def test_the_result_is_on_disk_and_named_by_a_fsynced_directory(tmp_path):
    dst = tmp_path / "out"
    with atomic_output(dst) as tmp:
        make_dir(tmp, {"a": b"1" * 10_000, "b/c": b"2"})
        fd = os.open(tmp / "a", os.O_RDONLY)
        os.close(fd)
    assert tree(dst) == {"a": b"1" * 10_000, "b/c": b"2"}


# -- kill at any instant ------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import ckpt_core
    from ckpt_core import Tensor

    mode, src, dst, target, marker = sys.argv[1:6]
    if mode == "slow":
        ck = ckpt_core.load(src)

        def slow(t):
            def load():
                Path(marker).write_text("writing")   # we are inside the writer now
                time.sleep(0.5)
                return t.raw()
            return Tensor.from_loader(t.dtype, t.shape, load)

        ck = ck.evolve(tensors={name: slow(t) for name, t in ck.tensors.items()})
        ckpt_core.save(ck, dst, target)
    else:
        print("go", flush=True)
        ckpt_core.convert(src, dst, to=target)
    print("done", flush=True)
""")


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    """A multi-MB safetensors file of BF16 words."""
    directory = tmp_path_factory.mktemp("kill-source")
    rng = np.random.default_rng(0)
    tensors = {f"layers.{i}.weight": Tensor.from_numpy(rng.integers(0, 1 << 16, size=(512, 1024), dtype=np.uint16), "BF16")
               for i in range(6)}  # 6 MB
    path = directory / "src.safetensors"
    safetensors_io.write_file(path, tensors)
    return path, {name: t.tobytes() for name, t in tensors.items()}


def run_child(tmp_path: Path, *args: str) -> subprocess.Popen:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = dict(os.environ, CKPT_CORE_PLUGINS="")  # built-in formats only: hermetic and quick to start
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def assert_absent_or_complete(dst: Path, expected: dict[str, bytes]) -> bool:
    """True if ``dst`` is there (then it must be whole and right), False if absent."""
    import ckpt_core

    if not (dst.exists() or dst.is_symlink()):
        return False
    ck = ckpt_core.load(dst, options={"verify": True} if dst.is_dir() else None)  # checksums, when it has them
    assert {name: t.tobytes() for name, t in ck.tensors.items()} == expected
    return True


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("target, name", [("safetensors", "out.safetensors"), ("canonical", "out")])
def test_sigkill_mid_write_leaves_no_destination(tmp_path, source, target, name):
    src, expected = source
    before = digest(src)
    dst = tmp_path / name
    marker = tmp_path / "marker"
    child = run_child(tmp_path, "slow", str(src), str(dst), target, str(marker))
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert child.poll() is None, child.communicate()
            assert time.monotonic() < deadline, "the child never started writing"
            time.sleep(0.01)
        time.sleep(0.1)
        assert siblings(dst), "the writer should be writing its temporary now"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert not dst.exists() and not dst.is_symlink()
    assert digest(src) == before, "the source must never be modified"
    # the dead writer's temporary is left behind (nothing can remove it); a new write still works
    import ckpt_core

    ckpt_core.convert(src, dst, to=target)
    assert assert_absent_or_complete(dst, expected)


@pytest.mark.parametrize("target, name", [("safetensors", "out.safetensors"), ("canonical", "out")])
def test_sigkill_at_assorted_instants_never_leaves_a_partial_destination(tmp_path, source, target, name):
    src, expected = source
    outcomes = []
    for attempt, delay in enumerate([0.0, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.08, 0.12, 0.2, None]):
        work = tmp_path / f"attempt{attempt}"
        work.mkdir()
        dst = work / name
        child = run_child(work, "convert", str(src), str(dst), target, str(work / "marker"))
        try:
            assert child.stdout.readline().strip() == "go", child.communicate()
            if delay is not None:
                time.sleep(delay)
                child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
            out, err = child.communicate()
        if delay is None:
            assert child.returncode == 0, err
        complete = assert_absent_or_complete(dst, expected)
        outcomes.append(complete)
        if not complete:
            assert not any((work / n).exists() for n in (name,))
    assert outcomes[-1] is True  # not killed: written whole
    assert False in outcomes  # at least one kill landed before the rename


def dead_pid() -> int:
    """The id of a process that has exited."""
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout)


def test_leftovers_of_killed_writers_on_this_host_are_removed_by_the_next_write(tmp_path):
    """Hidden directories of dead writers on this host go (for any name in the folder); a
    live writer's, and another host's (its process ids mean nothing here), stay."""
    dst = tmp_path / "out.safetensors"
    stale = tmp_path / f".out.safetensors.tmp-{atomic.HOST}-{dead_pid()}-abcd1234"
    (stale / "out.safetensors").mkdir(parents=True)
    other_name = tmp_path / f".other.safetensors.tmp-{atomic.HOST}-{dead_pid()}-abcd1234"  # another name, same folder
    other_name.mkdir()
    live = tmp_path / f".out.safetensors.tmp-{atomic.HOST}-{os.getpid()}-0000beef"  # a writer still running: kept
    live.mkdir()
    remote = tmp_path / f".out.safetensors.tmp-{atomic.HOST}x-{dead_pid()}-0000beef"  # another host's: kept
    remote.mkdir()
    with atomic_output(dst) as tmp:
        assert tmp.parent.name.startswith(f".out.safetensors.tmp-{atomic.HOST}-{os.getpid()}-")
        tmp.write_bytes(b"new")
    assert dst.read_bytes() == b"new"
    assert siblings(dst) == sorted([live.name, remote.name]) and not other_name.exists()


def test_a_writer_killed_between_the_two_renames_leaves_the_old_destination_back(tmp_path):
    """Without renameat2 the old destination is first moved into a hidden ``.old-`` directory:
    a writer killed there leaves no destination, and the next write puts the old one back."""
    dst = tmp_path / "out"
    make_dir(dst, {"a.bin": b"old"})
    old = tmp_path / f".out.old-{atomic.HOST}-{dead_pid()}-abcd1234"
    old.mkdir()
    dst.rename(old / "out")
    with atomic_output(tmp_path / "next.bin") as tmp:
        tmp.write_bytes(b"x")
    assert tree(dst) == {"a.bin": b"old"} and not old.exists()


def test_replacing_a_directory_without_renameat2_leaves_nothing_hidden(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_renameat2", lambda src, dst, flags: False)
    dst = tmp_path / "out"
    make_dir(dst, {"a.bin": b"old"})
    with atomic_output(dst, overwrite=True) as tmp:
        make_dir(tmp, {"b.bin": b"new"})
    assert tree(dst) == {"b.bin": b"new"} and siblings(dst) == []


def test_a_legal_long_name_never_fails_for_the_hidden_name(tmp_path):
    """A 250-byte destination name (legal: NAME_MAX is 255) is written: the hidden name
    beside it cuts the visible part and adds a hash."""
    for name in ("x" * 250 + ".bin", "é" * 127):
        dst = tmp_path / name
        with atomic_output(dst) as tmp:
            assert len(tmp.parent.name.encode()) <= atomic.NAME_MAX
            tmp.write_bytes(b"new")
        assert dst.read_bytes() == b"new"
