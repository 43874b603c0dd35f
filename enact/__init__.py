"""ENACT: entropy-based clustering of attention input for detection transformers."""
