"""LoRA checkpoints for ckpt-core: the nanoGPT LoRA fork and peft adapter directories."""
