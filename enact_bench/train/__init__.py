"""The training step the originals run (forward, loss, backward, clipping, AdamW), its optimizer and batch, shared by real and fake steps."""
