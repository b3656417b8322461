"""ckpt-plugin-deepspeed: DeepSpeed ZeRO checkpoints for ckpt-core (format ``deepspeed``).

What other plugins building on DeepSpeed's layout may use (the swiftkv plugin reads
ArcticTraining's resume state through these):

- ``tag_folder(path)``: the tag folder a save directory's ``latest`` names, or ``path``
  itself when it is one; None otherwise.
- ``model_states(folder)``: a tag folder's rank-0 model-states file.
- ``load(path)``: a DeepSpeed pickle as a ckpt-core tree, nothing in it run.
- ``list_run(save_dir)``: the tag folders of a save directory as RunEntries.
- ``TAG``: the tag names DeepSpeed and ArcticTraining use (``epoch_E_global_step_N``).
"""

from .folder import MODEL_STATES, TAG, list_run, model_states, tag_folder
from .pickles import load

__all__ = ["MODEL_STATES", "TAG", "list_run", "load", "model_states", "tag_folder"]
