"""The ENACT variant differs from the baseline only in the encoder self-attention modules, and its
encoder layer reproduces the ENACT release's layer (shared/oracle, computed by the release)."""
import re

import pytest
import torch

from enact_bench.detectors import create_detector
from enact_bench.detectors.detr_transformer import EncoderLayer

from detector_helpers import TINY, TINY_DETR, images

from enact import EnactAttention, EnactConfig

ENC_ATTN = re.compile(r"^transformer\.encoder\.layers\.(\d+)\.self_attn(\.|$)")


def _module_tree(model):
    return {n: type(m).__name__ for n, m in model.named_modules()}


@pytest.mark.parametrize("name", TINY_DETR)
def test_only_encoder_self_attention_differs(name):
    base, var = create_detector(name), create_detector(name, enact=True)
    tb, tv = _module_tree(base), _module_tree(var)
    outside_b = {n: t for n, t in tb.items() if not ENC_ATTN.match(n)}
    outside_v = {n: t for n, t in tv.items() if not ENC_ATTN.match(n)}
    assert outside_b == outside_v
    enc_layers = {int(ENC_ATTN.match(n).group(1)) for n in tv if ENC_ATTN.match(n)}
    assert enc_layers == set(range(len(var.transformer.encoder.layers)))
    for i in enc_layers:
        assert tv[f"transformer.encoder.layers.{i}.self_attn"] == "EnactAttention"
        assert tb[f"transformer.encoder.layers.{i}.self_attn"] == "MultiheadAttention"
    kb = {k: tuple(v.shape) for k, v in base.state_dict().items() if not ENC_ATTN.match(k)}
    kv = {k: tuple(v.shape) for k, v in var.state_dict().items() if not ENC_ATTN.match(k)}
    assert kb == kv
    attn_keys = {k.split("self_attn.")[1] for k in var.state_dict() if ENC_ATTN.match(k)}
    assert attn_keys == {f"W_{p}.{t}" for p in ("q", "k", "v", "o", "prob") for t in ("weight", "bias")}
    c = var.transformer.d_model
    n_enc = len(enc_layers)
    extra = sum(p.numel() for p in var.parameters()) - sum(p.numel() for p in base.parameters())
    assert extra == n_enc * (c + 1)  # W_prob per layer; W_q/k/v/o match in_proj + out_proj


def test_enact_layers_selects_a_subset_and_stats_follow_layer_order():
    model = create_detector("detr_tiny", enact=True, enact_layers=[1]).eval()
    kinds = [type(layer.self_attn).__name__ for layer in model.transformer.encoder.layers]
    assert kinds == ["MultiheadAttention", "EnactAttention"]
    with torch.no_grad():
        model(images(sizes=[(96, 128), (64, 96)]))
    stats = model.enact_stats()
    assert len(stats) == 1 and stats[0]["key_len_before"] == 3 * 4  # 96x128 / 32 = 3 x 4 tokens


def test_enact_layer_reproduces_the_release(oracle_case):
    """One DETR-ENACT encoder layer, weights and output from the release (eval mode)."""
    case = oracle_case
    c, heads, ff = case["meta"]["layer_ctor"]["d_model"], case["meta"]["layer_ctor"]["nhead"], \
        case["meta"]["layer_ctor"]["dim_feedforward"]
    sigma = case["meta"]["layer_ctor"]["sigma"]
    for backend in ("sdpa", "math"):
        attn = EnactAttention(c, heads, config=EnactConfig.reference(sigma).replace(backend=backend))
        layer = EncoderLayer(attn, c, ff, 0.1, use_padding_mask=False, need_weights=False,
                             release_key_order="enact").eval()
        layer.load_state_dict(case["layer"]["state_dict"], strict=True)
        assert list(layer.state_dict()) == list(case["layer"]["state_dict"])  # same keys, same order
        src = case["inputs"]["v"]
        pos = case["inputs"]["pos"].flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (S, B, C)
        mask = case["inputs"]["mask"].flatten(1)  # passed, and ignored as the release ignores it
        with torch.no_grad():
            out = layer(src, mask, pos)
        torch.testing.assert_close(out, case["layer"]["output_eval"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("enact_on", [False, True])
def test_sdpa_attention_gives_the_same_numbers(enact_on):
    torch.manual_seed(0)
    mha = create_detector("detr_tiny", enact=enact_on).eval()
    sdpa = create_detector("detr_tiny", enact=enact_on, attention="sdpa").eval()
    sdpa.load_state_dict(mha.state_dict())
    assert [l.need_weights for l in mha.transformer.decoder.layers] == [True, True]
    assert [l.need_weights for l in sdpa.transformer.decoder.layers] == [False, False]
    assert sdpa.attention == "sdpa" and mha.attention == "mha"
    imgs = images()
    with torch.no_grad():
        a, b = mha(imgs), sdpa(imgs)
    torch.testing.assert_close(a["pred_logits"], b["pred_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(a["pred_boxes"], b["pred_boxes"], atol=1e-5, rtol=0)
