"""Predicting what a GPU will need, without one: the fake training step, CUDA's kernel policy, the caching-allocator model, the GPU table, DDP buckets, the stream fit, the plan and its validation."""
