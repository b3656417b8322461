"""Write examples/tiny-gpt.safetensors: a small nanoGPT-shaped model (reproducible).

2 layers, d_model 32, vocabulary 65 (shakespeare_char), block size 64, with biases; the
names are nanoGPT's, so ckpt-core recognises the ``gpt`` family from them alone.
Run: python examples/make_tiny_gpt.py
"""

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

V, T, C, L = 65, 64, 32, 2


def tiny_gpt(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    sd = {"transformer.wte.weight": w(V, C), "transformer.wpe.weight": w(T, C)}
    for i in range(L):
        h = f"transformer.h.{i}."
        sd |= {
            h + "ln_1.weight": np.ones(C, np.float32), h + "ln_1.bias": np.zeros(C, np.float32),
            h + "attn.c_attn.weight": w(3 * C, C), h + "attn.c_attn.bias": np.zeros(3 * C, np.float32),
            h + "attn.c_proj.weight": w(C, C), h + "attn.c_proj.bias": np.zeros(C, np.float32),
            h + "ln_2.weight": np.ones(C, np.float32), h + "ln_2.bias": np.zeros(C, np.float32),
            h + "mlp.c_fc.weight": w(4 * C, C), h + "mlp.c_fc.bias": np.zeros(4 * C, np.float32),
            h + "mlp.c_proj.weight": w(C, 4 * C), h + "mlp.c_proj.bias": np.zeros(C, np.float32),
        }
    sd |= {"transformer.ln_f.weight": np.ones(C, np.float32), "transformer.ln_f.bias": np.zeros(C, np.float32),
           "lm_head.weight": sd["transformer.wte.weight"].copy()}
    return sd


if __name__ == "__main__":
    out = Path(__file__).with_name("tiny-gpt.safetensors")
    save_file(tiny_gpt(), str(out), metadata={"format": "pt"})
    print(f"wrote {out} ({out.stat().st_size} bytes)")
