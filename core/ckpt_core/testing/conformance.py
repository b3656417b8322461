"""The conformance suite a format plugin's tests subclass to get the shared promises tested.

    class TestMyFormat(FormatConformance):
        format = "myformat"

        def make_example(self, tmp_path):       # a small real example, written in tmp_path
            ...
            return tmp_path / "ckpt.pt"

        families = ("gpt",)   # optional: families for the property test (default: the spec's)
        bad_inputs = [("bad magic", make_bad_magic, CorruptInput)]   # optional

It checks the FormatSpec; that ``detect`` ranks the example first; load -> save -> load
keeps everything bit for bit; a Hypothesis property (any checkpoint the spec can hold
round-trips, and the ``train_state`` hook agrees with a full load); ``detect`` survives
junk; truncated input is CorruptInput, a missing path NotFound; existing destinations are
refused untouched; failed saves leave no file behind; the source is never modified.
``CKPT_CORE_HYPOTHESIS_PROFILE`` picks ``ci`` (default, 25 examples) or ``thorough`` (500).
Override ``checkpoint_strategy`` to narrow what the property test draws.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from .. import api, dtypes
from ..compare import differences, tree_differences
from ..errors import BaseMissing, CkptError, CorruptInput, DestinationExists, LossyConversion, NotFound
from ..model import CAPABILITIES, Adapter, Arch, Checkpoint, Detection, FormatSpec, OptimizerState, TrainState
from ..plugins import registry
from ..tensor import Tensor
from .strategies import checkpoints_for, spec_families

PROFILE_VAR = "CKPT_CORE_HYPOTHESIS_PROFILE"
# No example database: a failure prints its example, and plugin repos get no .hypothesis/.
PROFILES = {
    "ci": settings(max_examples=25, deadline=None, database=None),
    "thorough": settings(max_examples=500, deadline=None, database=None),
}
_profile = os.environ.get(PROFILE_VAR, "ci")
if _profile not in PROFILES:
    raise ValueError(f"{PROFILE_VAR}={_profile!r}: use one of {', '.join(PROFILES)}")
SETTINGS = PROFILES[_profile]

LOSSY_NAME = "ckpt_core_testing.unholdable"


class FormatConformance:
    """Base class of a format's conformance tests (not collected itself: subclasses are)."""

    __test__ = False
    format: str = ""
    families: tuple[str, ...] | None = None
    # (name, maker, error): maker(empty_dir) returns a path that loading must fail on with error.
    bad_inputs: Sequence[tuple[str, Callable[[Path], Path], type[Exception]]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "__test__" not in cls.__dict__:
            cls.__test__ = True

    def make_example(self, tmp_path: Path) -> Path:
        """Write a small real example of the format under ``tmp_path``; return its path."""
        raise NotImplementedError(f"{type(self).__name__} must define make_example(self, tmp_path)")

    def checkpoint_strategy(self) -> st.SearchStrategy[Checkpoint]:
        """What the property test round-trips: override to narrow (say, one dtype)."""
        spec = registry().spec(self.format)
        return st.one_of([checkpoints_for(spec, family) for family in self.families or spec_families(spec)])

    @pytest.fixture
    def example(self, tmp_path) -> Path:
        directory = tmp_path / "example"
        directory.mkdir()
        return self.make_example(directory)

    @pytest.fixture
    def out(self, tmp_path) -> Path:
        directory = tmp_path / "out"
        directory.mkdir()
        return directory

    # -- the spec and detection ---------------------------------------------------------

    def test_spec_is_sane(self):
        reg = registry()
        problems = [f"{p.name}: {p.error}" for p in reg.plugins if p.error]
        assert self.format in reg.formats, f"format {self.format!r} is not installed; plugin errors: {problems}"
        spec = reg.formats[self.format]
        assert spec.name == self.format
        assert spec.description.strip() and "\n" not in spec.description
        assert spec.families, "a format holds at least one family (\"*\" for any)"
        unknown = [f for f in spec.families if f not in ("*", "generic") and f not in reg.families]
        assert not unknown, f"families {unknown} are not installed (installed: {sorted(reg.families)})"
        assert spec.capabilities <= set(CAPABILITIES), f"unknown capabilities {sorted(spec.capabilities - set(CAPABILITIES))}"
        assert spec.dtypes and spec.dtypes <= dtypes.ALL_DTYPES
        assert all(isinstance(k, str) and isinstance(v, str) and v for k, v in spec.options.items())
        owners = [p.name for p in reg.plugins if self.format in p.formats]
        assert len(owners) == 1, f"format {self.format!r} is declared by {owners}"

    def test_detect_ranks_example_first(self, example):
        found = api.detect(example)
        assert found and found[0].format == self.format, f"detect({example.name}) gave {found}"
        best = found[0]
        assert 0 < best.confidence <= 1 and best.reason and "\n" not in best.reason
        rivals = [d for d in found[1:] if d.confidence >= best.confidence]
        assert not rivals, f"{rivals} are as confident as {best}"

    def test_detect_survives_junk(self, example, tmp_path):
        reg = registry()
        owner = next(p.name for p in reg.plugins if self.format in p.formats)
        impls = [i for i in reg.pm.hook.detect.get_hookimpls() if i.plugin_name == owner]
        for label, path in _junk(example, tmp_path / "junk").items():
            for impl in impls:
                try:
                    result = impl.function(path=path)
                except Exception as e:
                    pytest.fail(f"detect raised on {label} ({path}): {type(e).__name__}: {e}")
                for d in result if isinstance(result, list) else [result]:
                    assert d is None or (isinstance(d, Detection) and 0 <= d.confidence <= 1), f"{label}: {d!r}"

    # -- round trips ----------------------------------------------------------------------

    def test_load_save_load_is_exact(self, example, out):
        ck = api.load(example, self.format)
        dst = out / example.name
        api.save(ck, dst, self.format)
        back = api.load(dst, self.format)
        assert differences(ck, back) == []
        assert api.detect(dst)[0].format == self.format
        assert _train_state_differences(ck, dst, self.format) == []

    def test_roundtrip_property(self, example, out):
        if not registry().spec(self.format).writes_any:
            pytest.skip(f"{self.format} writes only what a real run has (FormatSpec.writes_any is False)")
        name = example.name

        @SETTINGS
        @given(self.checkpoint_strategy())
        def roundtrip(ck):
            with tempfile.TemporaryDirectory(dir=out) as directory:
                dst = Path(directory) / name
                api.save(ck, dst, self.format)
                assert differences(ck, api.load(dst, self.format)) == []
                assert _train_state_differences(ck, dst, self.format) == []

        roundtrip()

    def test_source_is_never_modified(self, example, out):
        before = _snapshot(example.parent)
        ck = api.load(example, self.format)
        api.save(ck, out / example.name, self.format)
        api.save(ck, out / "as-canonical", "canonical")
        _read_everything(api.load(example, self.format))
        assert _snapshot(example.parent) == before

    # -- bad input ------------------------------------------------------------------------

    @pytest.mark.parametrize("keep", ["nothing", "half", "all but one byte"])
    def test_truncated_input_is_corrupt(self, example, tmp_path, keep):
        path = _truncated_copy(example, tmp_path / "truncated", keep)
        with pytest.raises(CorruptInput) as caught:
            _read_everything(api.load(path, self.format))
        assert "\n" not in str(caught.value)

    def test_missing_path_is_not_found(self, example, tmp_path):
        missing = tmp_path / "missing" / example.name
        for fmt in (self.format, None):
            with pytest.raises(NotFound):
                api.load(missing, fmt)

    def test_bad_inputs(self, tmp_path):
        if not self.bad_inputs:
            pytest.skip("no bad_inputs declared")
        for name, maker, error in self.bad_inputs:
            directory = tmp_path / name.replace("/", "_")
            directory.mkdir()
            with pytest.raises(error) as caught:
                _read_everything(api.load(maker(directory), self.format))
            assert "\n" not in str(caught.value), name

    # -- output safety --------------------------------------------------------------------

    @pytest.mark.parametrize("kind", ["file", "directory"])
    def test_existing_destination_is_refused_untouched(self, example, out, kind):
        ck = api.load(example, self.format)
        dst = out / example.name
        if kind == "file":
            dst.write_bytes(b"precious")
        else:
            dst.mkdir()
            (dst / "precious.txt").write_bytes(b"precious")
        before = _snapshot(out)
        with pytest.raises(DestinationExists):
            api.save(ck, dst, self.format)
        assert _snapshot(out) == before

    def test_failed_save_leaves_nothing(self, example, out):
        ck = api.load(example, self.format)
        spec = registry().spec(self.format)
        cases = [("a missing parent directory", ck, out / "missing" / example.name, NotFound)]
        cases += [(f"a lossy save ({what})", bad, out / example.name, LossyConversion)
                  for what, bad in _unholdable(ck, spec).items()]
        if "adapters_alone" not in spec.capabilities:
            cases.append(("adapters without their base", _adapters_alone(), out / example.name, BaseMissing))
        if ck.tensors:
            cases.append(("a tensor that fails mid-write", _failing(ck), out / example.name, CkptError))
        for label, bad, dst, error in cases:
            with pytest.raises(error):
                api.save(bad, dst, self.format)
            left = sorted(p.name for p in out.iterdir())
            assert not left, f"{label} left {left} behind"


def _train_state_differences(ck: Checkpoint, path: Path, format: str) -> list[str]:
    """How the ``train_state`` hook's answer for ``path`` differs from ``ck.train_state``."""
    ts = api.train_state(path, format)
    return tree_differences(*(s.to_dict() if s else None for s in (ck.train_state, ts)), "train_state hook")


def _files(path: Path) -> list[Path]:
    return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())


def _snapshot(path: Path) -> dict[str, tuple]:
    """Every file and directory under ``path`` with its size, mtime and content hash."""
    found = {}
    for p in [path, *path.rglob("*")]:
        st_ = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        found[str(p.relative_to(path))] = (st_.st_size if p.is_file() else 0, st_.st_mtime_ns, digest)
    return found


def _read_everything(ck: Checkpoint) -> None:
    """Read every byte of every tensor a checkpoint references (lazy errors surface)."""
    def walk(value):
        if isinstance(value, Tensor):
            value.tobytes()
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                walk(v)

    ts = ck.train_state
    walk([*ck.tensors.values(), *((a.a, a.b) for a in ck.adapters.values()), ck.arch.params, ck.extra, ck.layout.facts])
    if ts is not None:
        walk([ts.best_metric, ts.metrics, ts.scheduler, ts.rng, ts.data_position, ts.config, ts.extra])
        if ts.optimizer is not None:
            walk([ts.optimizer.param_state, ts.optimizer.groups, ts.optimizer.extra])


def _copy(example: Path, directory: Path) -> Path:
    directory.mkdir(parents=True)
    dst = directory / example.name
    (shutil.copytree if example.is_dir() else shutil.copy2)(example, dst)
    return dst


def _truncated_copy(example: Path, directory: Path, keep: str) -> Path:
    """A copy of the example whose largest file keeps nothing, half, or all but its last
    byte (trailing whitespace aside: a JSON file without its final newline is still whole)."""
    dst = _copy(example, directory)
    largest = max(_files(dst), key=lambda p: p.stat().st_size)
    size = largest.stat().st_size
    whole = len(largest.read_bytes().rstrip())
    with open(largest, "r+b") as f:
        f.truncate({"nothing": 0, "half": size // 2, "all but one byte": max(whole - 1, 0)}[keep])
    return dst


def _junk(example: Path, directory: Path) -> dict[str, Path]:
    """Paths that are not valid checkpoints of any format, by description."""
    noise = random.Random(0).randbytes
    found: dict[str, Path] = {}

    def put(label: str, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        found.setdefault(label, path)

    put("a file of random bytes", directory / "random" / "junk.bin", noise(4096))
    put("an empty file", directory / "empty" / "junk", b"")
    (directory / "empty-dir").mkdir()
    found["an empty directory"] = directory / "empty-dir"
    for how, content in (("emptied", lambda p: b""), ("scrambled", lambda p: noise(p.stat().st_size))):
        target = directory / how / example.name
        for f in _files(example):
            put(f"the example with every file {how}", target / f.relative_to(example) if example.is_dir() else target, content(f))
    found["the example truncated"] = _truncated_copy(example, directory / "truncated", "half")
    return found


def _unholdable(ck: Checkpoint, spec: FormatSpec) -> dict[str, Checkpoint]:
    """Variants of ``ck``, each with one thing ``spec``'s format declares it cannot hold."""
    caps = spec.capabilities
    found = {}
    if "*" not in spec.families:
        found["family"] = ck.evolve(arch=Arch("ckpt-core-testing-unknown-family"))
    missing = sorted(dtypes.ALL_DTYPES - spec.dtypes)
    if missing:
        t = Tensor.from_bytes(bytes(dtypes.get(missing[0]).itemsize), missing[0], (1,))
        found[f"{missing[0]} tensor"] = ck.evolve(tensors={**ck.tensors, LOSSY_NAME: t})
    if "adapters" not in caps:
        weight = Tensor.from_bytes(bytes(16), "F32", (2, 2))
        adapter = Adapter(Tensor.from_bytes(bytes(8), "F32", (1, 2)), Tensor.from_bytes(bytes(8), "F32", (2, 1)), 1.0)
        found["adapter"] = ck.evolve(tensors={**ck.tensors, LOSSY_NAME: weight}, adapters={LOSSY_NAME: adapter})
    if "train_state" not in caps:
        found["train state"] = ck.evolve(train_state=TrainState(step=1))
    elif "optimizer_state" not in caps:
        found["optimizer state"] = ck.evolve(train_state=TrainState(step=1, optimizer=OptimizerState("sgd")))
    if "kv_sharing" not in caps:
        found["kv sharing"] = ck.evolve(kv_sharing={1: 0})
    if "trainable" not in caps:
        found["trainable set"] = ck.evolve(trainable=())
    if "extra" not in caps:
        found["extra"] = ck.evolve(extra={"ckpt-core-testing": {"kept": True}})
    return found


def _adapters_alone() -> Checkpoint:
    """An adapter file's checkpoint: one adapter on an absent base weight."""
    adapter = Adapter(Tensor.from_bytes(bytes(8), "F32", (1, 2)), Tensor.from_bytes(bytes(8), "F32", (2, 1)), 1.0)
    return Checkpoint(tensors={LOSSY_NAME: Tensor.absent("F32", (2, 2))}, adapters={LOSSY_NAME: adapter})


def _failing(ck: Checkpoint) -> Checkpoint:
    """``ck`` whose largest tensor raises when its bytes are read (its source vanished)."""
    name = max(ck.tensors, key=lambda n: ck.tensors[n].nbytes)
    t = ck.tensors[name]

    def vanish():
        raise CorruptInput(f"ckpt_core.testing: the bytes of {name!r} vanished mid-write")

    return ck.evolve(tensors={**ck.tensors, name: Tensor.from_loader(t.dtype, t.shape, vanish)})
