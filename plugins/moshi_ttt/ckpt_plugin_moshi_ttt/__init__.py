"""Moshi fine-tuning run directories with TTT layers for ckpt-core."""
