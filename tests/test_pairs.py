"""Every ordered pair of installed formats, for every family both hold (issue 8, part 1).

For each triple (A, B, family), Hypothesis draws canonical checkpoints A can hold (every
dtype, ties, KV sharing, adapters, train state, extra: what A's FormatSpec declares, see
``pairs_support.source_checkpoints``), writes them as A and reads them back (``ck_a``), then:

- nothing to lose (``losses.find(ck_a, B)`` is empty): A -> B -> A. What B reads back is
  ``ck_a`` in tensors, names, dtypes, shapes, arch, ties, KV sharing, adapters, trainable
  set, train state (also through B's ``train_state`` hook) and extra; written back as A it
  is ``ck_a`` bit for bit again, and where B's files record layouts
  (``pairs_support.KEEPS_LAYOUTS``), with A's layout: the same format, variant and facts,
  with the same (no) options. Sources are written with ``SOURCE_LAYOUTS`` (an ``_orig_mod.``
  prefix, metadata of their own) so that a layout that did not travel shows.
- adapters without their base (absent base tensors) and B stores full weights: writing B
  refuses with BaseMissing, naming ``--option base=PATH``, leaving nothing behind.
- something to lose: writing B refuses (LossyConversion naming each loss and its flag),
  leaving nothing at the destination; with the allowing flags (``allow_loss``,
  ``merge_adapters``, ``cast``) B holds exactly ``ck_a`` with those changes
  (``transforms.cast``, ``transforms.merge_adapters``, ``losses.apply_allowed``, in the
  order ``api.save`` applies them) and nothing else, and that goes back to A exactly.

A writer may also refuse what no FormatSpec states (half of a fused q/k/v, a tie its files
cannot express, a teacher written as a SwiftKV student without its plan): the test accepts
such a refusal (LossyConversion, UsageError, or CorruptInput for a checkpoint that
contradicts itself) only if it is one line that says how to allow it, where to convert
instead, or that nothing was written, and only if nothing was written; each one is recorded
as the test's ``writer_refusals`` property (``--junitxml`` shows them). After an allowed
loss, A may refuse what B gave back (a SwiftKV student without its KV sharing map), but only
as it refuses the expected checkpoint itself. Arch hyper-parameters compare as a mapping
(their key order is no fact of the model: ``hf`` writes config.json's order).

A format that accepts a family only by converting it (``pairs_support.NOT_A_SOURCE``:
nanoGPT <-> modded-nanogpt) cannot be its source: those rows check that it refuses that
family as it is. What a format is known to change (``KNOWN_CHANGES``: moshi's sorted key
order and one tie it normalises) is expected exactly; the key order is pinned by a strict
xfail test at the end, which fails once it changes.

The triples come from the installed plugins (``pairs_support.triples``), so a new plugin is
covered with no edit. Examples per triple: 5 in the default ``ci`` profile (170 triples on
this checkout: about 40 s on 2 idle cores), 100 in ``thorough``
(``CKPT_CORE_HYPOTHESIS_PROFILE=thorough``).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, reject, settings
from pairs_support import KEEPS_LAYOUTS, SOURCE_LAYOUTS, destination, not_a_source, paired_formats, source_checkpoints, triples

import ckpt_core
from ckpt_core import dtypes, losses, transforms
from ckpt_core.compare import differences, tree_differences
from ckpt_core.errors import BaseMissing, CkptError, CorruptInput, LossyConversion, PluginError, UsageError
from ckpt_core.model import Arch, Checkpoint, TrainState
from ckpt_core.plugins import registry
from ckpt_core.tensor import Tensor, same_bytes
from ckpt_core.testing import SETTINGS, spec_families
from ckpt_core.testing.conformance import PROFILE_VAR

EXAMPLES = {"ci": 5, "thorough": 100}
PAIR_SETTINGS = settings(SETTINGS, max_examples=EXAMPLES[os.environ.get(PROFILE_VAR, "ci")],
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TRIPLES = triples()
# A writer's own refusal says how to allow it, where to convert instead, or (for what no
# option changes, such as half of a fused tensor) that nothing was written.
NAMES_A_WAY = ("--option ", "--merge-adapters", "--allow-loss", "--cast", "instead", "Nothing was written")
CAST_TO = ("F32", "F16", "BF16")


def _moshi_reads_back(expected: Checkpoint, got: Checkpoint) -> Checkpoint:
    """``expected`` as moshi reads it back: in its sorted key order, and a TTT layer's second
    name stored apart with its original's bytes (a merge into both) back as the tie a moshi
    file has."""
    from ckpt_plugin_moshi_ttt.keys import ALIAS

    tensors, ties = dict(expected.tensors), dict(expected.ties)
    for name in [n for n in tensors if n in got.ties and ALIAS.match(n)]:
        target = got.ties[name]
        if target in tensors and same_bytes(tensors[name], tensors[target]):
            del tensors[name]
            ties[name] = target
    if set(tensors) == set(got.tensors):
        tensors = {name: tensors[name] for name in got.tensors}
    if set(ties) == set(got.ties):
        ties = {name: ties[name] for name in got.ties}
    return expected.evolve(tensors=tensors, ties=ties)


# What a format is known to change: format -> (what, expected -> what it reads back instead).
# moshi's key order is pinned by a strict xfail test at the end, which fails once it changes.
KNOWN_CHANGES = {
    "moshi": ("tensors and ties read back in moshi's sorted key order; "
              "a TTT layer's second name equal to its original reads back as a tie", _moshi_reads_back),
}


def _id(a: str, b: str, family: str) -> str:
    return f"{a}->{b}[{family}]"


def test_pairs_cover_every_installed_format():
    """The pair list is not trivial: every paired format is a source and a target, each
    ordered pair of them with a family in common appears, with each such family."""
    formats = paired_formats()
    assert len(formats) >= 2 and len(TRIPLES) >= len(formats) * (len(formats) - 1) // 2
    assert {a for a, _, _ in TRIPLES} == set(formats) == {b for _, b, _ in TRIPLES}
    for a in formats:
        for b in formats:
            shared = set(spec_families(formats[a])) & set(spec_families(formats[b]))
            listed = {f for x, y, f in TRIPLES if (x, y) == (a, b)}
            assert listed == (shared if a != b else set()), (a, b)
    assert len(set(TRIPLES)) == len(TRIPLES)


@pytest.mark.parametrize("a, b, family", TRIPLES, ids=[_id(*t) for t in TRIPLES])
def test_pair_converts_exactly_or_refuses(a, b, family, tmp_path, record_property):
    """A -> B -> A is exact for what B holds; what B cannot hold is refused before writing,
    and allowed, changes exactly as declared (see the module docstring)."""
    reason = not_a_source(a, family)
    refusals: set[str] = set()

    @PAIR_SETTINGS
    @given(source_checkpoints(a if reason is None else "canonical", family))
    def pair(ck):
        with tempfile.TemporaryDirectory(dir=tmp_path) as directory:
            if reason is None:
                _check_pair(a, b, ck, Path(directory), refusals)
            else:
                _check_not_a_source(a, ck, Path(directory))

    pair()
    record_property("writer_refusals", sorted(refusals))


def _check_not_a_source(a: str, ck: Checkpoint, directory: Path) -> None:
    """A format that holds a family only by converting it refuses it as it is."""
    if ck.absent_names():
        reject()  # adapters alone: refused for their missing base first (checked in _check_pair)
    with pytest.raises(LossyConversion) as refused:
        ckpt_core.save(ck, directory / destination(a), a)
    assert any(way in str(refused.value) for way in NAMES_A_WAY), str(refused.value)
    assert list(directory.iterdir()) == []


def _check_pair(a: str, b: str, ck: Checkpoint, directory: Path, refusals: set[str]) -> None:
    spec_b = registry().spec(b)
    path_a = _fresh(directory / "a", a)
    try:
        ckpt_core.save(ck.evolve(layout=SOURCE_LAYOUTS.get(a, ck.layout)), path_a, a)
    except (LossyConversion, UsageError):
        reject()  # A cannot hold this draw as it is; A's own conformance tests cover that
    ck_a = ckpt_core.load(path_a, a)

    path_b = _fresh(directory / "b", b)
    if ck_a.absent_names() and "adapters_alone" not in spec_b.capabilities:
        with pytest.raises(BaseMissing, match="--option base=PATH"):
            ckpt_core.save(ck_a, path_b, b)
        _assert_nothing_written(path_b)
        return
    lost = losses.find(ck_a, spec_b)
    flags: dict = {}
    expected = ck_a
    if lost:
        with pytest.raises(LossyConversion) as refused:
            ckpt_core.save(ck_a, path_b, b)
        message = str(refused.value)
        for loss in lost:
            assert loss.detail in message and loss.allow in message, (str(loss), message)
        _assert_nothing_written(path_b)
        flags = _allowing(lost, spec_b)
        if flags is None:
            return  # a family, or a dtype no cast reaches: refusal is all there is
        expected = _expected(ck_a, spec_b, flags)
        if expected is None:  # merging refuses (an adapter on an F8 or integer weight)
            with pytest.raises(UsageError):
                ckpt_core.save(ck_a, path_b, b, **flags)
            _assert_nothing_written(path_b)
            return
    try:
        ckpt_core.save(ck_a, path_b, b, **flags)
    except CkptError as e:  # B's writer refuses what its spec cannot state
        _assert_refusal(b, e, path_b)
        refusals.add(f"{b}: {type(e).__name__}: {e}")
        return
    ck_b = ckpt_core.load(path_b, b)
    expected = _assert_holds(b, expected, ck_b, path_b)

    path_a2 = _fresh(directory / "a2", a)
    try:
        ckpt_core.save(ck_b, path_a2, a)
    except CkptError as e:
        # After an allowed loss A may no longer hold the result (a SwiftKV student without its
        # KV sharing map): then it refuses the expected checkpoint just the same.
        _assert_refusal(a, e, path_a2)
        refusals.add(f"{a}: {type(e).__name__}: {e}")
        with pytest.raises(type(e)):
            ckpt_core.save(expected, path_a2, a)
        return
    ck_a2 = ckpt_core.load(path_a2, a)
    _assert_holds(a, expected, ck_a2, path_a2)
    if b in KEEPS_LAYOUTS and not lost and a != "canonical":  # canonical has no layout of its own: it keeps the one given
        back, before = ((x.format, x.variant, x.facts) for x in (ck_a2.layout, ck_a.layout))
        assert back == before, f"{b} did not keep {a}'s layout: {before} came back as {back}"


def _assert_holds(format: str, expected: Checkpoint, got: Checkpoint, path: Path) -> Checkpoint:
    """``got``, read back from ``format`` at ``path``, is ``expected`` exactly, and so is what
    its ``train_state`` hook reads; what ``KNOWN_CHANGES`` says ``format`` changes is expected too
    (and returned, as the checkpoint that goes on)."""
    known = KNOWN_CHANGES.get(format)
    if known is not None:
        expected = known[1](expected, got)
    found = differences(_ordered_params(expected), _ordered_params(got))
    assert not found, f"{format} did not keep what it holds{f' (its known changes aside: {known[0]})' if known else ''}: {found}"
    ts = ckpt_core.train_state(path, format)
    assert tree_differences(*(s.to_dict() if s else None for s in (expected.train_state, ts)), "train_state hook") == []
    return expected


def _assert_nothing_written(path: Path) -> None:
    left = sorted(p.name for p in path.parent.iterdir())
    assert not left, f"a refused conversion left {left} behind"


def _assert_refusal(format: str, error: CkptError, path: Path) -> None:
    """A writer's own refusal: one line that says how to proceed or that nothing was written,
    and nothing at the destination."""
    message = str(error)
    assert not isinstance(error, PluginError) and "\n" not in message, f"{format}: {type(error).__name__}: {message}"
    if not isinstance(error, CorruptInput):  # CorruptInput: the checkpoint contradicts itself (a SwiftKV
        # tensor without the structure that places it), which no option changes
        assert any(way in message for way in NAMES_A_WAY), f"{format} refused without saying what to do: {message}"
    _assert_nothing_written(path)


def _fresh(directory: Path, format: str) -> Path:
    directory.mkdir()
    return directory / destination(format)


def _allowing(lost: list[losses.Loss], spec) -> dict | None:
    """The flags that allow every loss in ``lost`` (None if one has no flag)."""
    flags: dict = {"allow_loss": sorted({loss.kind for loss in lost if loss.kind in losses.ALLOWABLE})}
    for loss in lost:
        if loss.kind == "adapters":
            flags["merge_adapters"] = True
        elif loss.kind == "dtype":
            dtype = next(d for d in dtypes.DTYPES if loss.detail.startswith(f"{d} tensors"))
            target = next((t for t in CAST_TO if t in spec.dtypes), None)
            if not dtypes.get(dtype).is_float or target is None:
                return None
            flags.setdefault("cast", {})[dtype] = target
        elif loss.kind not in losses.ALLOWABLE:
            return None
    return flags


def _expected(ck: Checkpoint, spec, flags: dict) -> Checkpoint | None:
    """``ck`` with exactly the changes ``flags`` allow, as ``api.save`` applies them (None
    when merging refuses: an adapter on a weight no merge computes in)."""
    if flags.get("cast"):
        ck = transforms.cast(ck, flags["cast"])
    if flags.get("merge_adapters"):
        try:
            ck = transforms.merge_adapters(ck)
        except UsageError:
            return None
    return losses.apply_allowed(ck, spec, flags["allow_loss"])


def _ordered_params(ck: Checkpoint) -> Checkpoint:
    return ck.evolve(arch=Arch(ck.arch.family, dict(sorted(ck.arch.params.items(), key=lambda kv: str(kv[0])))))


# -- moshi: an absent train state stays absent; key order is moshi's (pinned: XPASS once changed)


def test_moshi_keeps_an_absent_train_state_absent(tmp_path):
    """A checkpoint without train state is written as a consolidated folder, not as step 0 of a run."""
    ck = Checkpoint(tensors={"w": Tensor.from_bytes(bytes(8), "F32", (2,))})
    ckpt_core.save(ck, tmp_path / "run", "moshi")
    assert ckpt_core.load(tmp_path / "run", "moshi").train_state is None


@pytest.mark.xfail(strict=True, reason="moshi writes tensors in sorted key order (as its fine-tuning code does) and "
                                       "reads them back in that order, not the checkpoint's")
def test_moshi_keeps_tensor_order(tmp_path):
    t = Tensor.from_bytes(bytes(8), "F32", (2,))
    ck = Checkpoint(tensors={"b": t, "a": t}, train_state=TrainState(step=0))
    ckpt_core.save(ck, tmp_path / "run", "moshi")
    assert list(ckpt_core.load(tmp_path / "run", "moshi").tensors) == ["b", "a"]
