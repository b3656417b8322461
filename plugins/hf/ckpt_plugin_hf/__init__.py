"""Hugging Face transformers model directories (format ``hf``) for ckpt-core.

The public face, for formats built on HF directories (ckpt-plugin-swiftkv); everything
else in this package may change without notice:

- ``HF``: the format's name. ``LAYER``: the decoders' per-layer name prefix
  (``model.layers.{i}.``). ``CONFIG``: ``config.json``.
- ``read_config(dir)``, ``weights(dir)``, ``tensor_names(dir)``: a directory's config and
  which weights transformers would load (headers only).
- ``read(dir, fmt="hf", family=None)``: a directory as a canonical checkpoint whose layout and
  ``extra`` are under ``fmt``; ``with_kept(ck, fmt, config, derived, dir)`` keeps the
  config fields ``derived`` does not give back, and the other files, in ``extra[fmt]``.
- ``derived(ck, consumed)``: the config.json fields ``ck`` implies; ``build(derived,
  carried)``: config.json; ``params_from_config(config, family)``; ``ordered(params,
  family, first)``: hyper-parameters in config order.
- ``kept(ck, fmt, also)``: the carried config fields and files; ``write(ck, dir, config,
  files, options, fmt)``: the directory (inside a core writer's temporary path);
  ``save(ck, dir, options)``: what the ``hf`` writer does (derived config under the
  carried one, with ``extra["hf"]``'s files).
- ``family_of_model_type(model_type)``: the canonical family of a config's model type, or
  None (is this directory one ``read`` takes?).
- ``EMBED``, ``LM_HEAD``, ``TIE``: the decoders' tied embedding.
- Adding optional tensors to a decoder family: entry point group ``ckpt_plugin_hf.tensors``
  (see ``families``).
"""

from .config import EMBED, LM_HEAD, DEFAULT_TIE as TIE, build, derived, ordered, params_from_config
from .directory import HF, kept, read, save, with_kept, write
from .families import L as LAYER, family_of_model_type
from .hfdir import CONFIG, read_config, tensor_names, weights

__all__ = ["CONFIG", "EMBED", "HF", "LAYER", "LM_HEAD", "TIE", "build", "derived", "family_of_model_type", "kept", "ordered",
           "params_from_config", "read", "read_config", "save", "tensor_names", "weights", "with_kept", "write"]
