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
from ckpt_core.errors import CkptError, CkptWarning, CorruptInput, PluginError, UnsafeInput

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
                 "safetensors", "safetensors:index", "mlx", "hf", "hf:bin", "swiftkv", "swiftkv:deepspeed", "moshi", "dcp",
                 "deepspeed"]


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


# -- pickle structure and resource bombs -------------------------------------------------------------
#
# Files of a few KB (or MB) that claim or expand to far more: shared, cyclic and deep pickle
# structure; compressed and lying zip records; millions of tiny tensors. Each is planted where
# a format reads a pickle, and time and peak memory are measured in this process.

BOMB_SECONDS = 10  # generous: each case takes well under a second
BOMB_BYTES = 300 * 1024 * 1024  # generous: a refusal reads headers and a bounded data.pkl


def bomb_problems(fmt: str, source: Path, out: Path, label: str, words: str) -> list[str]:
    """Convert a bomb (``attempt``: one line, nothing written, the source unchanged) and
    check that it was refused as corrupt, saying ``words``, within ``BOMB_SECONDS`` and
    ``BOMB_BYTES``."""
    found: list = []
    _, seconds, peak = cases.measured(lambda: found.append(attempt(fmt, source, out, label)))
    error, _, problems = found[0]
    if not isinstance(error, CorruptInput) or words not in str(error):
        problems.append(f"gave {type(error).__name__}: {error}, not CorruptInput saying {words!r}")
    if seconds > BOMB_SECONDS or peak > BOMB_BYTES:
        problems.append(f"took {seconds:.1f} s and {peak / 2**20:.0f} MiB")
    return [f"{label}: {p}" for p in problems]


@pytest.mark.parametrize("name", list(cases.PICKLE_SITES))
def test_bad_input_pickle_structure_bombs(examples, work, name):
    """A shared (60 levels of tuples, each holding the one before twice), a cyclic (a list
    holding itself) and a deep (lists nested 100,000 deep) object planted in the pickle each
    format reads: converting is CorruptInput in bounded time and memory, and detect and
    train_state give an answer or a one-line CkptError, never a crash."""
    fmt, example, site = name.split(":")[0], examples[name], cases.PICKLE_SITES[name]
    failures = []
    for kind, ops in cases.STRUCTURE_BOMBS.items():
        root = work / kind
        shutil.copytree(example.parent, root)
        cases.with_pickle(example.parent / site, root / site, lambda data, ops=ops: cases.plant(data, "bomb", ops()))
        failures += bomb_problems(fmt, root / example.name, work / f"{kind}-out", f"{name}: {kind} structure",
                                  cases.STRUCTURE_WORDS[kind])
        for op, call in (("detect", lambda: api.detect(root / example.name)),
                         ("train_state", lambda: api.train_state(root / example.name, fmt))):
            error, seconds, _ = cases.measured(call)
            if (error is not None and not (isinstance(error, CkptError) and one_line(error))) or seconds > BOMB_SECONDS:
                failures.append(f"{name}: {kind} structure: {op} gave {type(error).__name__}: {error} in {seconds:.1f} s")
        COUNTS[name, "pickle-bomb"] += 1
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("name", list(cases.PICKLE_SITES))
def test_bad_input_zip_bombs(examples, work, name):
    """The pickle file each format reads, rewritten with a data.pkl that is deflated and
    declares 10 GiB, declares 9.9 KB but inflates to 10 GiB, a storage record deflated, or a
    local header that disagrees with the central directory (name, size, an extra length
    that shifts the data): each is CorruptInput, read in bounded time and memory. The same
    archive rewritten honestly converts (so the refusals are the lies')."""
    fmt, example, site = name.split(":")[0], examples[name], cases.PICKLE_SITES[name]
    honest = work / "honest"
    shutil.copytree(example.parent, honest)
    (honest / site).write_bytes(cases.zip_bytes(cases.archive_records(example.parent / site)))
    (work / "honest-out").mkdir()
    api.convert(honest / example.name, work / "honest-out" / "dst", "canonical", from_format=fmt)
    failures = []
    for k, (label, content) in enumerate(cases.zip_bombs(example.parent / site).items()):
        root = work / f"c{k}"
        shutil.copytree(example.parent, root)
        (root / site).write_bytes(content)
        failures += bomb_problems(fmt, root / example.name, work / f"c{k}-out", f"{name}: {label}", cases.ZIP_WORDS[label])
        COUNTS[name, "zip-bomb"] += 1
    assert not failures, "\n".join(failures)


def test_bad_input_many_tiny_tensors_cost_little_each(work):
    """100,000 one-element tensors (a 3.8 MB file) load through the scanner at well under
    2 KB and 100 us a tensor, measured here: the million ``MAX_TENSORS`` allows then costs
    at most some 2 GB and a couple of minutes even on a slow machine, not the 2.4 GB and
    more than a minute three million took before."""
    from ckpt_core import torchfile

    count = 100_000
    path = work / "many.pt"
    cases.many_tensors(path, count)
    loaded: list = []
    error, seconds, peak = cases.measured(lambda: loaded.append(torchfile.load(path)))
    assert error is None, error
    tree = loaded[0]
    first, last = tree["t0000000"], tree[f"t{count - 1:07d}"]
    assert len(tree) == count and last.file_range.offset - first.file_range.offset == 4 * (count - 1)
    assert last.tobytes() == bytes(4)
    assert peak / count < 2048 and seconds / count < 100e-6, f"{peak / count:.0f} bytes and {seconds / count * 1e6:.0f} us a tensor"
    assert torchfile.MAX_TENSORS <= 1_000_000


def test_bad_input_millions_of_tiny_tensors_refused_while_read(examples, work, monkeypatch):
    """Three million one-element tensors (a 114 MB data.pkl): refused as corrupt, naming the
    limit, once ``MAX_TENSORS`` have been read (here lowered to 100,000 to keep the test
    fast: the cost is bounded by the limit, not by the file), in bounded time and memory;
    through ``convert`` nothing is written and the file is unchanged."""
    from ckpt_core.torchfile import scanner

    monkeypatch.setattr(scanner, "MAX_TENSORS", 100_000)
    shutil.copytree(examples["hf:bin"], work / "case" / "teacher")
    source = work / "case" / "teacher" / "pytorch_model.bin"
    cases.many_tensors(source, 3_000_000)
    error, seconds, peak = cases.measured(lambda: scanner.scan(source))
    assert isinstance(error, CorruptInput) and "more than 100,000 tensors" in str(error) and str(source) in str(error)
    assert seconds < BOMB_SECONDS and peak < 2 * source.stat().st_size + 100_000 * 2048, (seconds, peak)
    error, _, problems = attempt("hf", source.parent, work / "out", "3M tensors as an hf directory")
    assert isinstance(error, CorruptInput) and not problems, (error, problems)


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


OPTION_VALUES = [2 ** 63 - 1, -1, "../x", [1, "a"], {"a": None}, True, float("nan")]


def test_bad_input_hostile_option_values(examples, work):
    """Every option every installed format declares, given values of every JSON type and
    absurd sizes, reading its example and writing the nanoGPT example: it works, or is a
    one-line CkptError that is not PluginError (a plugin's crash), leaving nothing behind."""
    from ckpt_core.plugins import registry

    failures = []
    for fmt, spec in registry().formats.items():
        for option in spec.options:
            for k, value in enumerate(OPTION_VALUES):
                out = work / f"{fmt}-{option}-{k}"
                out.mkdir()
                calls = {"convert": lambda: api.convert(examples["nanogpt"], out / "dst", fmt, {option: value})}
                if fmt in examples:
                    calls["load"] = lambda: api.load(examples[fmt], fmt, {option: value})
                for how, call in calls.items():
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        error, seconds, _ = cases.measured(call)
                    if error is not None and (isinstance(error, PluginError) or not isinstance(error, CkptError)
                                              or not one_line(error)):
                        failures.append(f"{fmt} {how} {option}={value!r:.30}: {type(error).__name__}: {error}")
                    if error is not None and how == "convert" and list(out.iterdir()):
                        failures.append(f"{fmt} {how} {option}={value!r:.30}: left {sorted(p.name for p in out.iterdir())}")
                    if seconds > CASE_SECONDS:
                        failures.append(f"{fmt} {how} {option}={value!r:.30}: took {seconds:.0f} s")
                shutil.rmtree(out)
    assert not failures, f"{len(failures)} broken promises:\n" + "\n".join(failures[:40])


def test_bad_input_cli_bombs_and_odd_values(examples, work):
    """Bombs, an unknown dtype and option values past what a plugin takes, through the real
    CLI: one line, the right exit code, no traceback, nothing written."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    runs = []

    def case(label: str, name: str, code: int, command: str, damage=None, options=()) -> None:
        example, site = examples[name], cases.PICKLE_SITES.get(name)
        root = work / f"c{len(runs)}" / "base"
        shutil.copytree(example.parent, root)
        if damage is not None:
            damage(example.parent / site, root / site)
        dst = work / f"c{len(runs)}" / "out" / "dst"
        dst.parent.mkdir()
        to = {"convert": ["canonical"], "fork": ["lora-nanogpt"]}.get(command)
        args = ["inspect" if command == "inspect" else "convert", root / example.name] + \
            ([dst, "--to", to[0]] if to else []) + [a for o in options for a in ("--option", o)]
        runs.append((label, code, dst, args, root / example.name))

    def bomb(kind):
        return lambda valid, target: cases.with_pickle(valid, target, lambda d: cases.plant(d, "bomb", cases.STRUCTURE_BOMBS[kind]()))

    def zip_bomb(label):
        return lambda valid, target: target.write_bytes(cases.zip_bombs(valid)[label])

    def e8m0(valid, target):
        obj = torch.load(valid, map_location="cpu", weights_only=True)
        obj["model"]["scales"] = torch.zeros(4, dtype=torch.float8_e8m0fnu)
        torch.save(obj, target)

    case("shared structure", "nanogpt", 5, "inspect", bomb("shared"))
    case("deep structure", "moshi", 5, "convert", bomb("deep"))
    case("cyclic structure", "swiftkv:deepspeed", 5, "convert", bomb("cyclic"))
    case("10 GiB data.pkl", "hf:bin", 5, "convert", zip_bomb("data.pkl deflated, declaring 10 GiB"))
    case("inflating data.pkl", "lora-nanogpt", 5, "convert", zip_bomb("data.pkl declaring 9.9 KB, inflating to 10 GiB"))
    case("float8_e8m0fnu tensor", "nanogpt", 5, "inspect", e8m0)
    case("rank 100000000000", "nanogpt", 2, "fork", options=["rank=100000000000"])
    case("seed of 100 digits", "nanogpt", 2, "fork", options=["rank=2", "seed=" + "9" * 100])
    with ThreadPoolExecutor(4) as pool:
        done = list(pool.map(lambda run: cli(*run[3]), runs))
    failures = []
    for (label, code, dst, _, source), d in zip(runs, done):
        failures += [f"{label}: {p}" for p in cli_problems(d, code, dst)]
        if code == 5 and str(source) not in d.stderr:
            failures.append(f"{label}: the line does not name {source}: {d.stderr.strip()}")
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
