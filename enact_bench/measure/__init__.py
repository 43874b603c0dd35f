"""Measuring on a device: torch.cuda memory, NVML, the CPU's live-tensor peak, step timing."""
