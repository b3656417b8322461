"""SwiftKV student directories (on Hugging Face teachers) and DeepSpeed resume state, for ckpt-core."""
