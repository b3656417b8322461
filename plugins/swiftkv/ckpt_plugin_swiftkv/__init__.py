"""Hugging Face teacher and SwiftKV student directories, DeepSpeed resume state, for ckpt-core."""
