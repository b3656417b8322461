"""Bad input through the CLI: one line each, no traceback, a distinct exit code per kind."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import nanogpt_reference as ref  # noqa: E402
from nanogpt_helpers import load, run  # noqa: E402


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_pickle_needing_globals_is_refused_naming_them(upstream, tmp_path, capsys):
    marker = tmp_path / "ran"
    ckpt = load(upstream["nanogpt"])
    ckpt["extra"] = ref.ScriptOptimizerState(str(marker), {})
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, _, err = run(capsys, "inspect", path, "--format", "nanogpt")
    assert code == 6 and "nanogpt_reference.ScriptOptimizerState" in _one_line(err)
    assert not marker.exists()


def test_truncated_zip_is_corrupt(upstream, tmp_path, capsys):
    path = tmp_path / "ckpt.pt"
    data = upstream["nanogpt"].read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    code, _, err = run(capsys, "inspect", path, "--format", "nanogpt")
    assert code == 5 and "ckpt.pt" in _one_line(err)


def test_without_format_bad_pt_files_say_what_is_wrong(upstream, tmp_path, capsys):
    """Nothing recognises them by structure, so the plugin claims them weakly: the error is
    the file's own problem, not "no installed format recognises it"."""
    marker = tmp_path / "ran"
    unsafe = tmp_path / "unsafe.pt"
    torch.save({"model": ref.ScriptOptimizerState(str(marker), {})}, unsafe)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(upstream["nanogpt"].read_bytes()[:4000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(bytes(range(256)) * 16)
    for path, code, words in ((unsafe, 6, "nanogpt_reference.ScriptOptimizerState"), (truncated, 5, "not a readable torch"),
                              (garbage, 5, "not a readable torch pickle")):
        got, _, err = run(capsys, "inspect", path)
        assert got == code and words in _one_line(err), err
    assert not marker.exists()
    other = tmp_path / "notes.txt"
    other.write_bytes(bytes(range(256)))
    assert run(capsys, "inspect", other)[0] == 4  # only .pt / .pth files are claimed


def test_missing_layer_is_named(upstream, tmp_path, capsys):
    ckpt = load(upstream["nanogpt"])
    ckpt["model"] = {k: v for k, v in ckpt["model"].items() if ".h.1.ln_2." not in k}
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 5 and "transformer.h.1.ln_2.weight: missing" in _one_line(err)


def test_mismatched_shape_is_named(upstream, tmp_path, capsys):
    ckpt = load(upstream["modded"])
    ckpt["model"]["_orig_mod.blocks.1.mlp.c_fc.weight"] = torch.zeros(100, 32)
    path = tmp_path / "state_step000003.pt"
    torch.save(ckpt, path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 5 and "blocks.1.mlp.fc.weight: shape [100, 32]" in _one_line(err)


def test_optimizer_of_another_model_is_corrupt(upstream, tmp_path, capsys):
    ckpt = load(upstream["nanogpt"])
    ckpt["optimizer"]["state"][0]["exp_avg"] = torch.zeros(3, 3)
    path = tmp_path / "ckpt.pt"
    torch.save(ckpt, path)
    code, _, err = run(capsys, "inspect", path)
    assert code == 5 and "optimizer exp_avg of transformer.wte.weight has shape [3, 3]" in _one_line(err)


def test_wrong_layout_for_the_named_format(upstream, capsys):
    code, _, err = run(capsys, "inspect", upstream["modded"], "--format", "modded-nanogpt-medium")
    assert code == 5 and "--from modded-nanogpt" in _one_line(err)


def test_bad_option_value_is_a_usage_error(upstream, tmp_path, capsys):
    code, _, err = run(capsys, "convert", upstream["nanogpt"], tmp_path / "x.pt", "--to", "nanogpt", "-o", "bare=maybe")
    assert code == 2 and "bare" in _one_line(err)
    assert not (tmp_path / "x.pt").exists()


def test_verify_finds_a_flipped_bit_that_mmap_reading_copies_along(upstream, tmp_path, capsys):
    import zipfile

    path = tmp_path / "ckpt.pt"
    data = bytearray(upstream["nanogpt"].read_bytes())
    with zipfile.ZipFile(upstream["nanogpt"]) as archive:
        record = next(i for i in archive.infolist() if "/data/" in i.filename and i.file_size > 64)
    data[record.header_offset + 200] ^= 0x01  # inside the record's data (past its local header)
    path.write_bytes(bytes(data))
    assert run(capsys, "inspect", path)[0] == 0  # headers and structure are intact
    code, _, err = run(capsys, "inspect", path, "--option", "verify=true")
    assert code == 5 and f"record {record.filename} does not match its CRC-32" in _one_line(err)
    code, _, err = run(capsys, "convert", path, tmp_path / "out", "--to", "canonical", "--option", "verify=true")
    assert code == 5 and not (tmp_path / "out").exists()


def test_code_in_place_of_a_model_tensor_is_claimed_and_refused_naming_it(upstream, tmp_path, capsys):
    """A model entry that needs code (a hostile pickle hides a payload among the weights):
    detection still claims the file, so ``inspect`` without ``--format`` says what it needs
    instead of "no installed format recognises it"; ``model_only`` names it too; a legacy
    (non-zip) modded file is refused naming it, not as a file that is not a zip."""
    marker = tmp_path / "ran"
    for key, src in (("nanogpt", upstream["nanogpt"]), ("modded", upstream["modded"])):
        ckpt = load(src)
        first = next(iter(ckpt["model"]))
        ckpt["model"][first] = ref.ScriptOptimizerState(str(marker), {})
        path = tmp_path / key / src.name
        path.parent.mkdir()
        torch.save(ckpt, path)
        code, _, err = run(capsys, "inspect", path)
        assert code == 6 and "nanogpt_reference.ScriptOptimizerState" in _one_line(err), err
    code, _, err = run(capsys, "inspect", path, "--format", "modded-nanogpt", "-o", "model_only=true")
    assert code == 6 and "nanogpt_reference.ScriptOptimizerState" in _one_line(err), err
    legacy = tmp_path / "legacy" / upstream["modded"].name
    legacy.parent.mkdir()
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    code, _, err = run(capsys, "inspect", legacy, "--format", "modded-nanogpt")
    assert code == 6 and "nanogpt_reference.ScriptOptimizerState" in _one_line(err), err
    assert not marker.exists()
