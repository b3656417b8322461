"""The conformance suite on a real FSDP2 checkpoint, and damaged or hostile DCP directories
through the command line: one line, the right exit code, nothing run, nothing written."""

from __future__ import annotations

import pickle
import shutil

import pytest

from ckpt_core.cli import main
from ckpt_core.testing import FormatConformance

torch = pytest.importorskip("torch")


class TestDcpConformance(FormatConformance):
    format = "dcp"

    @pytest.fixture(autouse=True)
    def _run(self, dcp_run):
        self.run = dcp_run

    def make_example(self, tmp_path):
        return shutil.copytree(self.run / "fsdp2", tmp_path / "step-1")


def _metadata(directory):
    with open(directory / ".metadata", "rb") as f:
        return pickle.load(f)  # torch's own classes: this test writes the damaged files


def _rewrite(directory, meta):
    with open(directory / ".metadata", "wb") as f:
        pickle.dump(meta, f)


def _two_chunks(meta):
    """The first tensor key FSDP2 split in two, its metadata and its chunks' storage indexes."""
    for key, md in meta.state_dict_metadata.items():
        if getattr(md, "chunks", None) and len(md.chunks) == 2:
            index = {i.offset: i for i in meta.storage_data if i.fqn == key}
            return key, md, [index[c.offsets] for c in md.chunks]
    raise AssertionError("no tensor has two chunks")


class _Payload:
    def __init__(self, canary):
        self.canary = canary

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.canary}",)


def hostile(directory, canary):
    (directory / ".metadata").write_bytes(pickle.dumps(_Payload(canary)))


def hostile_inside(directory, canary):
    meta = _metadata(directory)
    meta.planner_data["model.lm_head.weight"] = _Payload(canary)
    _rewrite(directory, meta)


def offset_past_the_end(directory, canary):
    meta = _metadata(directory)
    info = next(iter(meta.storage_data.values()))
    info.offset = (directory / info.relative_path).stat().st_size + 10
    _rewrite(directory, meta)


def overlapping_chunks(directory, canary):
    from torch.distributed.checkpoint.metadata import MetadataIndex

    meta = _metadata(directory)
    key, md, (first, second) = _two_chunks(meta)
    moved = torch.Size([md.chunks[1].offsets[0] - 1, *md.chunks[1].offsets[1:]])
    meta.storage_data[MetadataIndex(key, moved, second.index)] = meta.storage_data.pop(second)
    md.chunks[1].offsets = moved
    _rewrite(directory, meta)


def missing_chunk(directory, canary):
    meta = _metadata(directory)
    _, md, _ = _two_chunks(meta)
    del md.chunks[1]
    _rewrite(directory, meta)


def item_length_disagrees(directory, canary):
    meta = _metadata(directory)
    info = next(iter(meta.storage_data.values()))
    info.length -= 64
    _rewrite(directory, meta)


def tensor_size_disagrees(directory, canary):
    meta = _metadata(directory)
    key, md, _ = _two_chunks(meta)
    md.size = torch.Size([md.size[0] - 1, *md.size[1:]])
    md.chunks[1].sizes = torch.Size([md.chunks[1].sizes[0] - 1, *md.chunks[1].sizes[1:]])
    _rewrite(directory, meta)


def path_out_of_directory(directory, canary):
    meta = _metadata(directory)
    next(iter(meta.storage_data.values())).relative_path = "../__0_0.distcp"
    _rewrite(directory, meta)


def missing_file(directory, canary):
    (directory / "__1_0.distcp").unlink()


def metadata_not_a_pickle(directory, canary):
    (directory / ".metadata").write_bytes(b"\x80\x04" + bytes(100))


def _shard_header(directory, rank, change):
    """Rewrite rank ``rank``'s HuggingFaceStorageWriter shard with ``change(sharding_info)``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = sorted(directory.glob("shard-*.safetensors"))[rank]
    with safe_open(path, "pt") as f:
        metadata = f.metadata()
    info = json.loads(metadata["DCP_SHARDING_INFO"])
    change(info)
    save_file(load_file(path), path, {**metadata, "DCP_SHARDING_INFO": json.dumps(info)})


def hf_shards_overlap(directory, canary):
    _shard_header(directory, 1, lambda info: info["model.embed_tokens.weight"].update(saved_offsets=[1, 0]))


def hf_shard_without_offsets(directory, canary):
    _shard_header(directory, 0, lambda info: info.pop("lm_head.weight"))


def hf_first_shard_missing(directory, canary):
    sorted(directory.glob("shard-*.safetensors"))[0].unlink()


BAD = [  # (maker, exit code, what the message says)
    (hostile, 6, "posix.system"),
    (hostile_inside, 6, "posix.system"),
    (path_out_of_directory, 6, "not a file of the checkpoint's directory"),
    (offset_past_the_end, 5, "reaches past the file's end"),
    (overlapping_chunks, 5, "overlap"),
    (missing_chunk, 5, "do not cover"),
    (item_length_disagrees, 5, "not a readable torch zip"),
    (tensor_size_disagrees, 5, "the metadata says"),
    (missing_file, 3, "missing"),
    (metadata_not_a_pickle, 5, "damaged pickle"),
    (hf_shards_overlap, 5, "overlap"),
    (hf_shard_without_offsets, 5, "no offsets"),
    (hf_first_shard_missing, 5, "do not cover"),
]


@pytest.mark.parametrize("maker, code, says", BAD, ids=[b[0].__name__ for b in BAD])
def test_bad_dcp_is_one_line_and_its_exit_code(dcp_run, tmp_path, capsys, maker, code, says):
    source = "hf-shards" if maker.__name__.startswith("hf_") else "fsdp2"
    src = shutil.copytree(dcp_run / source, tmp_path / "step-1")
    canary = tmp_path / "canary"
    maker(src, canary)
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), str(tmp_path / "out"), "--to", "canonical", "--from", "dcp"])
    err = capsys.readouterr().err
    assert exit_info.value.code == code, err
    assert len(err.splitlines()) == 1 and says in err and "Traceback" not in err, err
    assert not canary.exists() and not (tmp_path / "out").exists()
