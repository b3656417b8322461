"""MLX step checkpoints (step_XXXXXX.safetensors + state JSON) for ckpt-core."""
