"""Hostile and corrupt input, for every installed format (issue 8, part 3).

Hostile pickles: files whose unpickling would call ``os.system``, ``eval``,
``subprocess.Popen`` or ``builtins.exec`` (alone, nested in dicts and lists, in torch zip
archives, legacy torch files and bare pickles), planted wherever a format reads a pickle.
The payload would create a canary file; after detect, inspect, load, train_state and
convert (through the API and the CLI) the canary must not exist, and the error must be
UnsafeInput naming the global.

Corrupt input: every format's small valid example (``bad_input_cases.build_examples``)
damaged in many deterministic ways (truncation, flipped header and data bytes, safetensors
header lengths near 2**64, overlapping and out-of-range offsets, unknown dtypes, absurd
shapes, malformed JSON and YAML, escaping names, links out of the directory, zip damage,
pickle op edits). The rule for each case: converting it to a fresh destination either
succeeds (the damage hit bytes that do not matter) or raises a one-line CkptError (never
another exception, never PluginError, which is a plugin's unexpected crash), within a
bounded time; a failure leaves nothing at the destination or beside it, and the source is
never changed. A sample also goes through the real CLI: the exit code is the error class's
code, stderr one line, no traceback. ``test_bad_input_count`` checks that at least 1000
distinct damaged inputs were loaded and prints the breakdown.
"""

from __future__ import annotations

import collections
import hashlib
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import bad_input_cases as cases
import pytest

from ckpt_core import api
from ckpt_core.errors import CkptError, CkptWarning, PluginError, UnsafeInput

CASE_SECONDS = 20  # a hang guard, generous: a case takes milliseconds
PER_FILE = 8  # random byte-level cases per file of an example (twice that for one-file examples)
CAP = 120  # cases per example at most, sampled across kinds (bounds the time of many-file examples)
COUNTS: collections.Counter = collections.Counter()  # (example, kind) -> distinct damaged inputs loaded
OUTCOMES: collections.Counter = collections.Counter()  # what converting the damaged inputs gave
SEEN: set[tuple[str, str]] = set()  # (example, digest of the damaged tree): each counted once





@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """Where examples and cases are written: on tmpfs where there is one (the cases are
    bound by file creation, fsync and removal, several times faster there), else pytest's
    temporary directory."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        directory = Path(tempfile.mkdtemp(prefix="ckpt-core-bad-input-", dir=shm))
        yield directory
        shutil.rmtree(directory, ignore_errors=True)
    else:
        yield tmp_path_factory.mktemp("bad-input")


@pytest.fixture(scope="module")
def examples(scratch) -> dict[str, Path]:
    return cases.build_examples(scratch / "examples")


@pytest.fixture
def work(scratch, request) -> Path:
    directory = scratch / request.node.name.replace("/", "_")
    directory.mkdir()
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every entry under ``roots``: file hashes, link targets, directories (links not followed)."""
    found = {}
    for root in roots:
        if not (root.exists() or root.is_symlink()):
            continue
        for p in [root, *root.rglob("*")]:
            if p.is_symlink():
                found[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                found[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
            else:
                found[str(p)] = ("dir",)
    return found


def one_line(e: BaseException) -> bool:
    return "\n" not in str(e) and "Traceback" not in str(e) and bool(str(e).strip())


def attempt(fmt: str, source: Path, out: Path, label: str) -> tuple[BaseException | None, list[str], list[str]]:
    """Convert ``source`` (read as ``fmt``) to canonical at a fresh ``out/dst``; return the
    error (None on success), the CkptWarnings given and every broken promise (as text)."""
    problems = []
    guarded = [source.parent, source.parent.parent / f"{source.parent.name}-outside"]
    before = snapshot(*guarded)
    out.mkdir()
    error = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with cases.time_limit(CASE_SECONDS, label):
                api.convert(source, out / "dst", "canonical", from_format=fmt)
        except Exception as e:  # noqa: BLE001 - judged below: anything but a one-line CkptError is a finding
            error = e
    if error is not None:
        if not isinstance(error, CkptError) or isinstance(error, PluginError):
            problems.append(f"{type(error).__name__}: {error}")
        elif not one_line(error):
            problems.append(f"{type(error).__name__} not one line: {error!r}")
        left = sorted(p.name for p in out.iterdir())
        if left:
            problems.append(f"a failed conversion left {left}")
    stray = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, CkptWarning)]
    if stray:
        problems.append(f"warnings the CLI would print as tracebacks: {stray}")
    if snapshot(*guarded) != before:
        problems.append("the source changed")
    return error, [str(w.message) for w in caught if issubclass(w.category, CkptWarning)], problems


def refused(warning: str) -> bool:
    """Whether a warning says a run directory's checkpoint was skipped for an escaping name."""
    return "not a plain file name" in warning or "link out of" in warning or "which is not a folder name" in warning


def run_mutations(name: str, example: Path, work: Path, mutations) -> list[str]:
    """Apply each mutation to a fresh copy of the example, attempt it, count it; return
    failures. A damaged tree identical to one already tried (paths of this case aside) is
    skipped and not counted."""
    fmt = name.split(":")[0]
    failures = []
    for i, (kind, label, apply) in enumerate(mutations):
        case = work / f"c{i}"
        root = case / "base"
        shutil.copytree(example.parent, root, symlinks=True)
        apply(root)
        digest = hashlib.sha256(repr(sorted(snapshot(case).items())).replace(str(case), "").encode()).hexdigest()
        if (name, digest) in SEEN:
            shutil.rmtree(case)
            continue
        SEEN.add((name, digest))
        error, warned, problems = attempt(fmt, root / example.name, case / "out", f"{name}: {label}")
        if kind == "escape" and not (isinstance(error, UnsafeInput) or (error is None and any(map(refused, warned)))):
            problems.append(f"an escaping name gave {type(error).__name__}: {error}, not UnsafeInput")
        COUNTS[name, kind] += 1
        OUTCOMES["converted" if error is None else type(error).__name__] += 1
        failures += [f"{name}: {kind}: {label}: {p}" for p in problems]
        shutil.rmtree(case)
    return failures


EXAMPLE_NAMES = ["nanogpt", "modded-nanogpt", "modded-nanogpt-medium", "lora-nanogpt", "peft", "peft:bin", "canonical",
                 "safetensors", "safetensors:index", "mlx", "hf", "hf:bin", "swiftkv", "swiftkv:deepspeed", "moshi", "dcp"]


@pytest.mark.parametrize("name", EXAMPLE_NAMES)
def test_bad_input_damaged_examples(examples, work, name):
    example = examples[name]
    assert cases.files_of(example), f"{name}: the example has no files"
    before = len(SEEN)
    per_file = PER_FILE * (2 if len(cases.files_of(example)) == 1 else 1)
    failures = run_mutations(name, example, work, cases.sample(cases.mutations(example, name, per_file), CAP, name))
    assert len(SEEN) - before >= 40, f"{name}: only {len(SEEN) - before} distinct damaged inputs"
    assert not failures, f"{len(failures)} broken promises:\n" + "\n".join(failures[:40])


# -- hostile pickles ---------------------------------------------------------------------------------


def hostile_operations(fmt: str, source: Path, out: Path) -> dict:
    """What a user can do with a file: each must leave the payload unrun."""
    ops = {
        "detect": lambda: api.detect(source),
        "load": lambda: api.load(source, fmt),
        "train_state": lambda: api.train_state(source, fmt),
        "convert": lambda: api.convert(source, out / "dst", "canonical"),
    }
    if fmt == "modded-nanogpt":
        ops["load model_only"] = lambda: api.load(source, fmt, {"model_only": True})
    return ops


@pytest.mark.parametrize("name", list(cases.PICKLE_SITES))
def test_bad_input_hostile_pickles_run_nothing(examples, work, name):
    """Every payload in every form at the pickle the format reads: nothing runs; loading and
    converting are UnsafeInput naming the global; detect and train_state do not crash."""
    fmt = name.split(":")[0]
    example = examples[name]
    site = cases.PICKLE_SITES[name]
    canary = work / "canary"
    failures = []
    for payload_name, (payload, names) in cases.payloads(canary).items():
        for k, form in enumerate(cases.PICKLE_FORMS):
            root = work / f"{payload_name}-{k}"
            shutil.copytree(example.parent, root)
            cases.write_hostile(example.parent / site, root / site, form, payload)
            out = work / f"{payload_name}-{k}-out"
            out.mkdir()
            label = f"{name}: {payload_name} payload, {form}"
            for op, call in hostile_operations(fmt, root / example.name, out).items():
                error = None
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", CkptWarning)
                    try:
                        with cases.time_limit(CASE_SECONDS, f"{label}: {op}"):
                            call()
                    except Exception as e:  # noqa: BLE001 - judged below
                        error = e
                if canary.exists():
                    failures.append(f"{label}: {op} RAN THE PAYLOAD")
                    canary.unlink()
                if error is not None and not isinstance(error, UnsafeInput):
                    failures.append(f"{label}: {op} gave {type(error).__name__}: {error}")
                elif error is None and op in ("load", "convert"):
                    failures.append(f"{label}: {op} succeeded")
                elif error is not None and not (any(n in str(error) for n in names) and one_line(error)):
                    failures.append(f"{label}: {op}: the refusal does not name {' or '.join(names)}: {error}")
            if list(out.iterdir()):
                failures.append(f"{label}: convert left {sorted(p.name for p in out.iterdir())}")
            COUNTS[name, "hostile-pickle"] += 1
    if canary.exists():  # a Popen child finishes after its call returns
        failures.append(f"{name}: a payload ran (the canary appeared late)")
    assert not failures, f"{len(failures)} broken promises:\n" + "\n".join(failures[:40])


def test_bad_input_payloads_are_live(tmp_path):
    """The canary works: plain ``pickle.loads`` of each payload creates it (so its absence
    after a ckpt-core operation means the payload did not run)."""
    canary = tmp_path / "canary"
    for name, (payload, _) in cases.payloads(canary).items():
        result = pickle.loads(pickle.dumps({"a": [payload]}, protocol=2))
        child = result["a"][0]
        if isinstance(child, subprocess.Popen):
            child.wait()
        assert canary.exists(), name
        canary.unlink()


# -- the command line ---------------------------------------------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckpt_core", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def cli_problems(done: subprocess.CompletedProcess, code: int, dst: Path) -> list[str]:
    """How a CLI run breaks the promises: exit ``code``; on failure one stderr line, no
    traceback, nothing at ``dst`` or beside it; on success only warning lines."""
    lines = done.stderr.splitlines()
    problems = []
    if done.returncode != code:
        problems.append(f"exit {done.returncode}, expected {code}")
    if "Traceback" in done.stderr:
        problems.append("a traceback")
    if code and len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if not code and any(not line.startswith("ckpt-core: warning:") for line in lines):
        problems.append("stderr besides warnings")
    if code and list(dst.parent.iterdir()):
        problems.append(f"left {sorted(p.name for p in dst.parent.iterdir())}")
    return [f"{p}: {done.stderr.strip()[:300]}" for p in problems]


def cli_sample(examples: dict[str, Path], count: int) -> list[tuple[str, cases.Mutation]]:
    """A fixed sample of ``count`` cases across examples and kinds of damage: examples in
    turn, each giving the first case of a kind not sampled yet (of any example, else of
    this one), so the sample spans as many kinds as it can."""
    found = {name: cases.sample(cases.mutations(examples[name], name, PER_FILE), CAP, name) for name in EXAMPLE_NAMES}
    chosen, used = [], set()
    for n in range(count):
        name = EXAMPLE_NAMES[n % len(EXAMPLE_NAMES)]
        kinds = sorted({m[0] for m in found[name]})
        kind = next((k for k in kinds if k not in used), None) or \
            next((k for k in kinds if (name, k) not in {(c[0], c[1][0]) for c in chosen}), kinds[0])
        used.add(kind)
        chosen.append((name, next(m for m in found[name] if m[0] == kind)))
    return chosen


def test_bad_input_cli_exit_codes(examples, work):
    """A sample of damaged inputs through the real CLI (``convert``, in subprocesses, four at
    a time): the exit code is the code of the error the API gives (0 if it succeeds),
    stderr one line without a traceback, nothing written."""
    from concurrent.futures import ThreadPoolExecutor

    runs = []
    for i, (name, (kind, label, apply)) in enumerate(cli_sample(examples, 20)):
        example = examples[name]
        root = work / f"c{i}" / "base"
        shutil.copytree(example.parent, root, symlinks=True)
        apply(root)
        (work / f"c{i}" / "api").mkdir()
        error, _, _ = attempt(name.split(":")[0], root / example.name, work / f"c{i}" / "api" / "out", label)
        dst = work / f"c{i}" / "cli" / "dst"
        dst.parent.mkdir()
        code = 0 if error is None else error.exit_code if isinstance(error, CkptError) else 10
        runs.append((f"{name}: {kind}: {label}", code, dst, ["convert", root / example.name, dst, "--to", "canonical",
                                                              "--from", name.split(":")[0]]))
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda run: cli(*run[3]), runs))
    failures = [f"{label}: {p}" for (label, code, dst, _), d in zip(runs, done) for p in cli_problems(d, code, dst)]
    assert {code for _, code, _, _ in runs} >= {0, 3, 5, 6}, "the sample should show success and several error kinds"
    assert not failures, "\n".join(failures)


def test_bad_input_cli_hostile_pickles(examples, work):
    """Hostile pickles through the real CLI (three: each run imports torch, which costs
    seconds): ``inspect`` or ``convert`` exits 6 naming the global in one line, the payload
    does not run, nothing is written."""
    from concurrent.futures import ThreadPoolExecutor

    canary = work / "canary"
    live = cases.payloads(canary)
    runs = []
    forms = cases.PICKLE_FORMS
    for name, payload_name, form, command in [("nanogpt", "os.system", forms[0], "inspect"),
                                              ("moshi", "exec", forms[3], "convert"),
                                              ("swiftkv:deepspeed", "subprocess.Popen", forms[2], "convert")]:
        example, site = examples[name], cases.PICKLE_SITES[name]
        root = work / name.replace(":", "-")
        shutil.copytree(example.parent, root)
        cases.write_hostile(example.parent / site, root / site, form, live[payload_name][0])
        dst = work / f"{root.name}-{command}" / "dst"
        dst.parent.mkdir()
        args = [command, root / example.name] + ([dst, "--to", "canonical"] if command == "convert" else [])
        runs.append((f"{name}: {payload_name}, {form}: {command}", live[payload_name][1], dst, args))
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda run: cli(*run[3]), runs))
    failures = []
    for (label, names, dst, _), d in zip(runs, done):
        failures += [f"{label}: {p}" for p in cli_problems(d, UnsafeInput.exit_code, dst)]
        if not any(n in d.stderr for n in names):
            failures.append(f"{label}: stderr does not name {' or '.join(names)}: {d.stderr.strip()}")
    assert not canary.exists(), "a payload ran"
    assert not failures, "\n".join(failures)


def test_bad_input_count():
    """At least 1000 distinct damaged inputs (hostile pickles aside) were loaded across
    formats when the whole module ran, with every outcome among them; the breakdown is
    printed."""
    ran = {name for name, _ in COUNTS}
    if not set(EXAMPLE_NAMES) <= ran:
        pytest.skip("counts only when every example's damage test ran (run the whole module)")
    by_example = collections.Counter()
    by_kind = collections.Counter()
    for (name, kind), n in COUNTS.items():
        by_example[name] += n
        by_kind[kind] += n
    damaged = sum(n for (_, kind), n in COUNTS.items() if kind != "hostile-pickle")
    report = (f"\nbad-input cases: {damaged} damaged inputs and {by_kind['hostile-pickle']} hostile pickles loaded"
              + "\n  by example: " + ", ".join(f"{k} {v}" for k, v in sorted(by_example.items()))
              + "\n  by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(by_kind.items()))
              + "\n  damaged inputs by outcome: " + ", ".join(f"{k} {v}" for k, v in sorted(OUTCOMES.items())))
    print(report)
    assert damaged >= 1000, report
    assert {"converted", "CorruptInput", "UnsafeInput", "NotFound"} <= set(OUTCOMES), report
