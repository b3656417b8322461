"""The formats built into the core: ``canonical`` (lossless reference) and ``safetensors``."""
