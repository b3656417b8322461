"""``python -m ckpt_core``: the ``ckpt-core`` command."""

from .cli import main

main()
