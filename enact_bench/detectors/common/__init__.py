"""Parts shared by the detector families (the family files sit one folder up, flat):
backbone, position encoding, matcher, criterion, post-processing, MLP, box ops, nested-tensor
padding, config checks, inverse sigmoid and the multi-scale deformable-attention op."""
