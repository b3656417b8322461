"""torch.distributed.checkpoint (DCP) directories for ckpt-core, read without torch."""
