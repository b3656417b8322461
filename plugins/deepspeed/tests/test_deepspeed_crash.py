"""Writing DeepSpeed checkpoints killed at random instants (SIGKILL of the CLI): the
destination is absent or complete (every rank's files, loading as the reference), the
source unchanged, nothing but the killed writer's hidden temporary left, which the next
write sweeps. The shared crash suite converts a plain safetensors file, which DeepSpeed
takes only with --option optimizer=fresh; this is its case for writes from DeepSpeed runs."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time

import pytest

import ckpt_core
from ckpt_core.compare import differences

CLI = [sys.executable, "-m", "ckpt_core"]
KILLS = 5


def digests(path):
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize("options", [["stage=3", "world_size=1"], ["universal=true"]])
def test_write_killed_at_random_instants(ds_runs, tmp_path, options):
    src = ds_runs["z2-fp32-ws2"]
    before = digests(src)
    args = [str(src), "--to", "deepspeed", "--quiet", *[a for o in options for a in ("--option", o)]]
    ref = tmp_path / "ref"
    start = time.perf_counter()
    subprocess.run([*CLI, "convert", args[0], str(ref), *args[1:]], check=True, capture_output=True)
    duration = time.perf_counter() - start
    expected = ckpt_core.load(ref)
    rng = random.Random(f"deepspeed:{options}")
    for i, delay in enumerate([0.0, *((k + rng.random()) / (KILLS - 2) * duration for k in range(KILLS - 2)), 1.5 * duration]):
        work = tmp_path / f"kill{i}"
        work.mkdir()
        dst = work / "run"
        child = subprocess.Popen([*CLI, "convert", args[0], str(dst), *args[1:]], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert digests(src) == before, "the source was modified"
        if dst.exists():
            assert differences(ckpt_core.load(dst), expected) == [] and sorted(digests(dst)) == sorted(digests(ref))
        left = [p.name for p in work.iterdir() if p.name != "run"]
        assert all(name.startswith(".run.tmp-") for name in left), left
        done = subprocess.run([*CLI, "convert", args[0], str(dst), *args[1:], "--overwrite"], capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr
        assert [p.name for p in work.iterdir()] == ["run"] and differences(ckpt_core.load(dst), expected) == []
