"""Shared helpers of the benchmarks in bench/: checkpoint shapes and data, timing a command
in its own process, and where to put the files.

Not a test module and not part of the package: the scripts beside it import it by name
(``python bench/bench_formats.py`` puts bench/ first on sys.path).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

MB = 1_000_000
VOCAB = 50304  # nanoGPT's padded GPT-2 vocabulary
BLOCK = 1024


def parse_size(text: str) -> int:
    """``100MB``, ``1GB``, ``4GiB``, ... as bytes (ckpt-core's own parser)."""
    from ckpt_core.safetensors_io import parse_size as parse

    return parse(text)


def human(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / MB:.0f} MB"


# -- checkpoint shapes and data ---------------------------------------------------------------------


def gpt_shapes(size: int) -> tuple[int, dict[str, tuple[int, ...]]]:
    """The state dict shapes of a nanoGPT model (bias=False, as nanoGPT's train.py sets it)
    of about ``size`` BF16 bytes, and its width: 4096 wide (the width halves until an
    embedding and one layer fit), as many layers as fit. ``lm_head.weight`` is not listed:
    it is tied to ``transformer.wte.weight`` and stored once."""
    d = 4096
    while d > 64 and 2 * (VOCAB * d + 12 * d * d) > size:
        d //= 2

    def layer(i: int) -> dict[str, tuple[int, ...]]:
        h = f"transformer.h.{i}."
        return {h + "ln_1.weight": (d,), h + "attn.c_attn.weight": (3 * d, d), h + "attn.c_proj.weight": (d, d),
                h + "ln_2.weight": (d,), h + "mlp.c_fc.weight": (4 * d, d), h + "mlp.c_proj.weight": (d, 4 * d)}

    shapes = {"transformer.wte.weight": (VOCAB, d), "transformer.wpe.weight": (BLOCK, d), **layer(0)}
    tail = {"transformer.ln_f.weight": (d,)}
    i = 1
    while nbytes({**shapes, **layer(i), **tail}) <= size:
        shapes.update(layer(i))
        i += 1
    return d, {**shapes, **tail}


LLAMA_VOCAB = 32000


def llama_shapes(size: int) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A Hugging Face Llama of about ``size`` BF16 bytes (Llama-2-7B's proportions: 4096
    wide, 32 heads of 128, 8 KV heads, MLP 3.5 x wide, untied head; the width halves until
    the embeddings and one layer fit, as many layers as fit): its config.json and shapes."""
    d = 4096
    while d > 64 and 2 * (2 * LLAMA_VOCAB * d + 12 * d * d) > size:
        d //= 2
    ff, kv = d * 7 // 2, d // 4

    def layer(i: int) -> dict[str, tuple[int, ...]]:
        h = f"model.layers.{i}."
        return {h + "input_layernorm.weight": (d,), h + "self_attn.q_proj.weight": (d, d), h + "self_attn.k_proj.weight": (kv, d),
                h + "self_attn.v_proj.weight": (kv, d), h + "self_attn.o_proj.weight": (d, d),
                h + "post_attention_layernorm.weight": (d,), h + "mlp.gate_proj.weight": (ff, d),
                h + "mlp.up_proj.weight": (ff, d), h + "mlp.down_proj.weight": (d, ff)}

    shapes = {"model.embed_tokens.weight": (LLAMA_VOCAB, d), **layer(0)}
    tail = {"model.norm.weight": (d,), "lm_head.weight": (LLAMA_VOCAB, d)}
    n = 1
    while nbytes({**shapes, **layer(n), **tail}) <= size:
        shapes.update(layer(n))
        n += 1
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "bfloat16", "hidden_size": d,
              "intermediate_size": ff, "num_hidden_layers": n, "num_attention_heads": d // 128 or 1,
              "num_key_value_heads": (d // 128 or 1) // 4 or 1, "head_dim": 128 if d >= 128 else d, "vocab_size": LLAMA_VOCAB,
              "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 4096}
    return config, {**shapes, **tail}


def nbytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """BF16 bytes of tensors of these shapes."""
    return 2 * sum(int(np.prod(s)) for s in shapes.values())


MOSHI_7B = dict(  # moshi's 7B config.json (moshiko), from which the benchmark scales down
    dim=4096, text_card=32000, existing_text_padding_id=3, n_q=16, dep_q=8, card=2048, num_heads=32,
    num_layers=32, hidden_scale=4.125, causal=True, layer_scale=None, context=3000, max_period=10000,
    gating="silu", norm="rms_norm_f32", positional_embedding="rope", depformer_dim=1024,
    depformer_dim_feedforward=4224, depformer_num_heads=16, depformer_num_layers=6, depformer_layer_scale=None,
    depformer_multi_linear=True, depformer_context=8, depformer_gating="silu", depformer_pos_emb="none",
    depformer_weights_per_step=True, delays=[0, 0] + [1] * 7 + [0] + [1] * 7)


def moshi_config(size: int) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """A moshi ``config.json`` and its LMModel's state dict shapes for about ``size`` BF16
    bytes: the 7B model's (dim 4096) with as many transformer layers as fit; when even one
    layer does not fit, first the depformer gets fewer layers and codebooks, then the
    width halves. Shapes come from moshi's own LMModel built on the meta device."""
    for dim in (4096, 2048, 1024, 512, 256):
        for dep_layers, n_q, dep_q in ((6, 16, 8), (2, 16, 8), (1, 8, 4), (1, 2, 1)):
            cfg = {**MOSHI_7B, "dim": dim, "num_heads": max(dim // 128, 2), "depformer_dim": min(1024, dim),
                   "depformer_dim_feedforward": int(4.125 * min(1024, dim)),
                   "depformer_num_heads": max(min(1024, dim) // 64, 2), "depformer_num_layers": dep_layers,
                   "n_q": n_q, "dep_q": dep_q, "delays": [0] + ([0] + [1] * (dep_q - 1)) * (n_q // dep_q)}
            one, two = (nbytes(moshi_shapes({**cfg, "num_layers": n})) for n in (1, 2))
            if one <= size:
                layers = 1 + (size - one) // (two - one)
                cfg["num_layers"] = layers
                return cfg, moshi_shapes(cfg)
    raise SystemExit(f"{human(size)} is too small for a moshi model")


def moshi_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    import torch
    from moshi.models.lm import LMModel

    with torch.device("meta"):
        model = LMModel(**cfg)
    return {k: tuple(v.shape) for k, v in sorted(model.state_dict().items())}


_POOL: np.ndarray | None = None


def bf16_words(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic BF16 words (uint16) of a normal(0, 0.02) tensor of ``shape``: a 16 MB
    pool of random values, rotated by ``seed`` (fast to make at any size, and not a
    compressible constant)."""
    global _POOL
    if _POOL is None:
        from ckpt_core.dtypes import from_float32

        rng = np.random.default_rng(0)
        _POOL = from_float32((rng.standard_normal(1 << 23) * 0.02).astype(np.float32), "BF16")
    n = int(np.prod(shape))
    out = np.empty(n, np.uint16)
    start = seed % len(_POOL)
    first = np.roll(_POOL, -start)[:n]
    out[:len(first)] = first
    for at in range(len(first), n, len(_POOL)):
        piece = _POOL[: n - at]
        out[at:at + len(piece)] = piece
    return out.reshape(shape)


def write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], metadata: dict[str, str] | None) -> None:
    """A BF16 safetensors file of these shapes, written tensor by tensor (at most one
    tensor in memory)."""
    from ckpt_core import safetensors_io
    from ckpt_core.tensor import Tensor

    def loader(shape, seed):
        return lambda: bf16_words(shape, seed)

    tensors = {name: Tensor.from_loader("BF16", shape, loader(shape, i * 7919))
               for i, (name, shape) in enumerate(shapes.items())}
    safetensors_io.write_file(path, tensors, metadata)


# -- measuring --------------------------------------------------------------------------------------


# A process's peak RSS (ru_maxrss) starts from the high-water mark of the process that
# forked it (exec records the old address space's peak), so cases are started by this
# small launcher, not by the benchmark itself (which holds numpy and a tensor's worth of
# memory): what a case reports is its own peak (or the launcher's ~10 MB, for `cp`).
LAUNCHER = textwrap.dedent("""
    import json, os, subprocess, sys, time
    argv = json.loads(sys.argv[1])
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    print(json.dumps({"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "maxrss_kib": usage.ru_maxrss, "code": code}))
""")


def run(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Wall seconds, peak RSS bytes (the largest of it and its children) and CPU seconds
    (user + system, its own and its children's: unlike wall, barely moved by other
    processes competing for the cores) of one subprocess. Runs `sync` first, so that no earlier case's dirty pages are flushed
    inside this one's time."""
    os.sync()
    done = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, json.dumps(argv)], env=env,
                          capture_output=True, text=True, check=False)
    result = json.loads(done.stdout) if done.returncode == 0 and done.stdout.strip() else {"code": done.returncode}
    if result["code"] != 0:
        raise SystemExit(f"failed ({result['code']}): {' '.join(argv)}\n{done.stderr}")
    return result["wall"], result["maxrss_kib"] * 1024, result["cpu"]  # Linux reports KiB


def summarize(samples: list[tuple[float, int, float]]) -> dict[str, float]:
    """Median and minimum wall, median CPU time, and the highest peak RSS, of a case's runs."""
    walls = [s[0] for s in samples]
    return {"wall": statistics.median(walls), "wall_min": min(walls), "rss": max(s[1] for s in samples),
            "cpu": statistics.median(s[2] for s in samples)}


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tree_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def fs_type(path: Path) -> str:
    """The filesystem type under ``path`` (from /proc/mounts; longest mount point wins)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if (str(path) + "/").startswith(mount.rstrip("/") + "/") and len(mount) >= len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


def work_parent(requested: Path | None) -> Path:
    """Where the temp dir goes: ``requested``, else /work when writable, else the current
    directory. A tmpfs is refused: its files live in RAM, which distorts time and memory."""
    if requested is None:
        work = Path("/work")
        requested = work if work.is_dir() and os.access(work, os.W_OK) else Path.cwd()
    parent = requested.resolve()
    kind = fs_type(parent)
    if kind in ("tmpfs", "ramfs"):
        raise SystemExit(f"{parent} is a {kind}: its files live in RAM, which distorts both time and memory. Use --dir.")
    return parent


def warm(path: Path) -> None:
    """Read every file under ``path`` once, so that runs start with it in the page cache."""
    for p in [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file()):
        with open(p, "rb") as f:
            while f.read(64 << 20):
                pass
