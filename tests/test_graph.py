"""ckpt_core.graph: a checkpoint's graph as metadata JSON, and family recognition."""

import numpy as np
import pytest

from ckpt_core import Arch, Checkpoint, CorruptInput, LossyConversion, Tensor, graph
from ckpt_core.gpt import GPT
from ckpt_core.model import Layout


def test_graph_round_trips_through_json():
    t = Tensor.from_numpy(np.zeros((4, 2), np.float32))
    ck = Checkpoint(arch=Arch("generic", {"n_layer": 2, "shape": (1, 2), "by_layer": {3: "x"}}), tensors={"a": t, "b": t},
                    ties={"c": "a"}, kv_sharing={3: 1}, trainable=("b",))
    g = graph.from_json(graph.to_json(ck, "here", "safetensors"), "there")
    assert (g.arch, g.ties, g.kv_sharing, g.trainable, g.layouts) == (ck.arch, ck.ties, ck.kv_sharing, ck.trainable, ())


def test_layouts_travel_in_the_graph_up_to_the_writers_own():
    """A file records the layouts the checkpoint was in (newest first); converting back to
    one of them records only what that format's own file recorded, so A -> B -> A is A."""
    nanogpt = Layout("nanogpt", "nanogpt", {"prefix": "_orig_mod.", "by_index": {0: (1, b"x")}})
    older = Layout("hf", "teacher", {"weights": "safetensors"})
    ck = Checkpoint(layout=Layout("nanogpt", "nanogpt", nanogpt.facts, [older]))
    g = graph.from_json(graph.to_json(ck, "here", "mlx"), "there")
    assert g.layouts == (nanogpt, older)
    from_mlx = Checkpoint(layout=Layout("mlx", "run", {"metadata": {}}, g.layouts))
    assert from_mlx.layout.of("nanogpt", "modded-nanogpt") == nanogpt and from_mlx.layout.of("canonical") is None
    assert graph.from_json(graph.to_json(from_mlx, "here", "nanogpt"), "there").layouts == (older,)
    assert graph.from_json(graph.to_json(from_mlx, "here", "mlx"), "there").layouts == (nanogpt, older)
    assert graph.from_json(graph.to_json(from_mlx, "here", "hf"), "there").layouts == ()
    with_tensor = Checkpoint(layout=Layout("x", "", {"t": Tensor.from_numpy(np.zeros(2, np.float32))}, [older]))
    assert graph.from_json(graph.to_json(with_tensor, "here", "mlx"), "there").layouts == (older,)
    with pytest.raises(CorruptInput, match="malformed"):
        graph.from_json('{"arch": {"family": "gpt", "params": {}}, "ties": {}, "trainable": null, "layouts": [{}]}', "there")


def test_tensors_in_hyper_parameters_and_bad_json_are_refused():
    ck = Checkpoint(arch=Arch("generic", {"table": Tensor.from_numpy(np.zeros(2, np.float32))}))
    with pytest.raises(LossyConversion, match="an MLX step file cannot keep"):
        graph.to_json(ck, "an MLX step file", "mlx")
    for text in ("{", '{"arch": {}}', '{"arch": {"family": "gpt", "params": {}}, "ties": 3, "trainable": null}'):
        with pytest.raises(CorruptInput, match="metadata 'x' is malformed"):
            graph.from_json(text, "f.safetensors: metadata 'x'")


def test_recognised_arch_finds_the_family_the_names_fit():
    d, v, t = 8, 16, 4
    shapes = {"transformer.wte.weight": (v, d), "transformer.wpe.weight": (t, d), "transformer.h.0.ln_1.weight": (d,),
              "transformer.h.0.attn.c_attn.weight": (3 * d, d), "transformer.h.0.attn.c_proj.weight": (d, d),
              "transformer.h.0.ln_2.weight": (d,), "transformer.h.0.mlp.c_fc.weight": (4 * d, d),
              "transformer.h.0.mlp.c_proj.weight": (d, 4 * d), "transformer.ln_f.weight": (d,), "lm_head.weight": (v, d)}
    tensors = {n: Tensor.from_bytes(bytes(4 * int(np.prod(s))), "F32", s) for n, s in shapes.items()}
    arch = graph.recognised_arch(tensors, {"gpt": GPT})
    assert arch.family == "gpt" and arch.params["d_model"] == d and arch.params["vocab_size"] == v
    assert graph.recognised_arch({"x": tensors["lm_head.weight"]}, {"gpt": GPT}) == Arch()
    assert graph.recognised_arch(tensors, {}) == Arch()  # only the families given count
