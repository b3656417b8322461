"""ckpt-plugin-mlx-lm: mlx-lm model directories for ckpt-core (format ``mlx-lm``)."""
