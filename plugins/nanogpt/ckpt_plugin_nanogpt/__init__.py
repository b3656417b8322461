"""nanoGPT ckpt.pt and modded-nanogpt (qkv_w, qkvo_w) checkpoints for ckpt-core."""
