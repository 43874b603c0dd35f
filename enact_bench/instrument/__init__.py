"""What real and fake training steps share: the live-tensor tracker, the saved-tensor counter, the op recorder, FLOPs and the peak's attribution (breakdown)."""
