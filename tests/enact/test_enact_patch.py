"""patch/unpatch and from_multihead_attention."""
import pytest
import torch
from torch import nn

import enact
from enact import EnactAttention, EnactConfig


class _Tiny(nn.Module):
    """An encoder layer and a decoder cross-attention, DETR-style (sequence-first)."""

    def __init__(self, C=32, heads=4):
        super().__init__()
        self.encoder = nn.ModuleList([nn.ModuleDict({"self_attn": nn.MultiheadAttention(C, heads)}) for _ in range(2)])
        self.decoder_attn = nn.MultiheadAttention(C, heads)

    def forward(self, src, tgt):
        for layer in self.encoder:
            src = src + layer["self_attn"](src, src, src)[0]
        return self.decoder_attn(tgt, src, src)[0]


def _encoder_only(name, module):
    return name.startswith("encoder.") and name.endswith("self_attn")


def test_patch_selected_modules_and_unpatch_restores_them_exactly():
    torch.manual_seed(0)
    model = _Tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    originals = {n: m for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    src, tgt = torch.randn(60, 2, 32), torch.randn(5, 2, 32)
    expect = model(src, tgt)

    names = enact.patch(model, where=_encoder_only, config=EnactConfig(cluster_size=3))
    assert names == ["encoder.0.self_attn", "encoder.1.self_attn"]
    assert all(isinstance(model.get_submodule(n), EnactAttention) for n in names)
    assert isinstance(model.decoder_attn, nn.MultiheadAttention)
    assert not any(isinstance(m, nn.MultiheadAttention) for n, m in model.named_modules() if n.startswith("encoder"))
    out = model(src, tgt)
    assert out.shape == expect.shape and not torch.allclose(out, expect)
    assert "encoder.0.self_attn.W_prob.weight" in model.state_dict()

    assert sorted(enact.unpatch(model)) == sorted(names)
    for n, m in model.named_modules():
        if n in originals:
            assert m is originals[n]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert torch.equal(model(src, tgt), expect)
    assert enact.unpatch(model) == []  # nothing left to restore


def test_patch_by_type_and_errors():
    model = _Tiny()
    assert len(enact.patch(model, where=nn.MultiheadAttention)) == 3
    enact.unpatch(model)
    with pytest.raises(TypeError, match="patch replaces attention modules it has an adapter for; .encoder.0.: ModuleDict has no ENACT adapter"):
        enact.patch(model, where=lambda n, m: n == "encoder.0")
    with pytest.raises(ValueError, match="selected no module"):
        enact.patch(model, where=lambda n, m: False)
    with pytest.raises(TypeError, match="where must be"):
        enact.patch(model, where=3)


def test_from_multihead_attention_with_L1_and_standard_scale_is_the_same_attention():
    """With windows of one position (L = 1) the pooled keys are the keys, so ENACT with the
    standard scale computes exactly what the MHA it was copied from computes."""
    torch.manual_seed(1)
    mha = nn.MultiheadAttention(32, 4).eval()
    for cfg in (EnactConfig(cluster_size=1, scale="standard"), EnactConfig(cluster_size=1, scale="standard", backend="math")):
        ea = EnactAttention.from_multihead_attention(mha, cfg)
        assert torch.equal(ea.W_q.weight, mha.in_proj_weight[:32]) and torch.equal(ea.W_o.bias, mha.out_proj.bias)
        q, kv = torch.randn(40, 3, 32), torch.randn(40, 3, 32)
        expect, _ = mha(q, kv, kv, need_weights=False)
        got, _ = ea(q, kv, kv)
        assert (got - expect).abs().max().item() <= 1e-5


def test_from_multihead_attention_rejects_what_it_cannot_copy():
    with pytest.raises(ValueError, match="kdim == vdim == embed_dim"):
        EnactAttention.from_multihead_attention(nn.MultiheadAttention(32, 4, kdim=16, vdim=16))
    with pytest.raises(ValueError, match="biases"):
        EnactAttention.from_multihead_attention(nn.MultiheadAttention(32, 4, bias=False))
    with pytest.raises(TypeError, match="expected nn.MultiheadAttention"):
        EnactAttention.from_multihead_attention(nn.Linear(3, 3))
