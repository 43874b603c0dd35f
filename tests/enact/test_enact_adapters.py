"""ENACT in attention modules other than nn.MultiheadAttention (enact/adapters.py): a q/k/v/o
self-attention by duck typing, and HF transformers' DETR-family encoders through enact.patch."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import enact
from enact import EnactAttention, EnactConfig, EnactSelfAttention
from enact.adapters import ProjectionSelfAttentionAdapter, key_padding_from


class _QKVO(nn.Module):
    """The shape HF's DetrSelfAttention has: four Linear(C, C), batch-first, pos added to q and k."""

    def __init__(self, c=16, heads=4, out_name="o_proj", pos_name="position_embeddings"):
        super().__init__()
        self.head_dim = c // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        setattr(self, out_name, nn.Linear(c, c))
        self.pos_name = pos_name

    def forward(self, hidden_states, attention_mask=None, position_embeddings=None, **kwargs):
        raise AssertionError("replaced by ENACT; never called")


class _DabLike(_QKVO):
    def __init__(self):
        super().__init__(out_name="out_proj")
        self.num_heads = 4

    def forward(self, hidden_states, attention_mask=None, object_queries=None, key_value_states=None,
                output_attentions=False):
        raise AssertionError


@pytest.mark.parametrize("host_cls,pos_name", [(_QKVO, "position_embeddings"), (_DabLike, "object_queries")])
def test_patched_self_attention_equals_enact_attention_on_the_same_weights(host_cls, pos_name):
    torch.manual_seed(0)
    model = nn.Module()
    model.encoder = nn.ModuleList([nn.Module()])
    model.encoder[0].self_attn = host_cls()
    host = model.encoder[0].self_attn
    cfg = EnactConfig(cluster_size=3)
    names = enact.patch(model, where=lambda n, m: n.endswith("self_attn"), config=cfg)
    assert names == ["encoder.0.self_attn"]
    new = model.encoder[0].self_attn
    assert isinstance(new, EnactSelfAttention) and new.position_arg == pos_name

    ref = EnactAttention(16, 4, config=cfg, batch_first=True)
    ref.load_state_dict(new.enact.state_dict())  # the same W_q..W_o (the host's) and W_prob
    assert torch.equal(ref.W_q.weight, host.q_proj.weight)
    h, pos = torch.randn(2, 20, 16, requires_grad=True), torch.randn(2, 20, 16)
    out, weights = new(h, None, **{pos_name: pos})
    expect, _ = ref(h + pos, h + pos, h)
    assert weights is None and out.shape == (2, 20, 16)
    assert torch.equal(out, expect)
    out.square().mean().backward()
    assert h.grad is not None and new.enact.W_prob.weight.grad is not None and new.enact.W_q.weight.grad is not None
    assert new.last_stats == {"cluster_size": 3, "key_len_before": 20, "key_len_after": 6}
    enact.unpatch(model)
    assert model.encoder[0].self_attn is host


def test_adapter_says_why_a_module_does_not_fit():
    assert ProjectionSelfAttentionAdapter.accepts(_QKVO())
    no_bias = _QKVO()
    no_bias.k_proj = nn.Linear(16, 16, bias=False)
    assert "no bias" in ProjectionSelfAttentionAdapter.why_not(no_bias)
    model = nn.Module()
    model.attn = nn.Linear(4, 4)
    with pytest.raises(TypeError, match="'attn': Linear has no ENACT adapter"):
        enact.patch(model, where=lambda n, m: n == "attn")
    with pytest.raises(ValueError, match="key_value_states"):
        EnactSelfAttention.from_projections(_QKVO())(torch.randn(1, 4, 16), key_value_states=torch.randn(1, 4, 16))


def test_key_padding_from_boolean_and_additive_masks():
    keep = torch.tensor([[True, True, False]])
    assert torch.equal(key_padding_from(keep[:, None, None, :].expand(1, 1, 3, 3), 3), ~keep)
    additive = torch.zeros(1, 1, 3, 3).masked_fill(~keep[:, None, None, :], float("-inf"))
    assert torch.equal(key_padding_from(additive, 3), ~keep)
    assert torch.equal(key_padding_from(keep.long(), 3), ~keep)
    assert key_padding_from(None, 3) is None


@pytest.mark.parametrize("model_type", ["detr", "conditional_detr", "dab-detr", "table-transformer", "rt_detr",
                                        "rt_detr_v2", "d_fine"])
def test_hf_encoders_take_enact_in_every_encoder_self_attention(model_type):
    """HF's DETR family through the harness's source: ENACT in each encoder self-attention (and
    nowhere else), the model still trains (output shapes, gradients into W_prob)."""
    from enact_bench.detectors import create_detector
    from enact_bench.data.batch import make_batch
    from enact_bench.train.step import loss_of

    torch.manual_seed(0)
    model = create_detector(f"hf:{model_type}", tiny=True, enact=EnactConfig(cluster_size=2))
    patched = [n for n, m in model.named_modules() if isinstance(m, EnactSelfAttention)]
    assert patched and all(".encoder." in n and n.endswith("self_attn") for n in patched)
    assert not any("decoder" in n for n in patched)
    batch = make_batch(2, (64, 96), num_targets=2, num_classes=model.num_classes)
    model.train()
    loss = loss_of(model.build_criterion(), model(batch.images, targets=batch.targets), batch.targets)
    loss.backward()
    for n in patched:
        assert model.get_submodule(n).enact.W_prob.weight.grad is not None
    assert [s["cluster_size"] for s in model.enact_stats()] == [2] * len(patched)
