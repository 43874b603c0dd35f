"""A few dozen AdamW steps on one fixed small batch must fit it: the loss goes down a lot."""
import pytest
import torch

from enact_bench.detectors import create_detector

from detector_helpers import TINY, VARIANTS, images, targets

STEPS = 24


@pytest.mark.parametrize("enact", VARIANTS)
@pytest.mark.parametrize("name", TINY)
def test_training_reduces_loss_on_a_fixed_batch(name, enact):
    torch.manual_seed(0)
    # frozen backbone (lr_backbone=0, as the originals treat it) keeps the test fast; no dropout so
    # that the decrease measures fitting, not noise
    model = create_detector(name, enact=enact, num_classes=20, lr_backbone=0.0, dropout=0.0).train()
    assert not any(p.requires_grad for p in model.backbone.parameters())
    criterion = model.build_criterion()
    opt = torch.optim.AdamW(model.param_groups(lr=1e-3))  # groups carry lr and weight_decay
    imgs = images(sizes=[(64, 64), (48, 64)])
    tgts = targets(num_classes=20)[:2]
    history = []
    for _ in range(STEPS):
        losses = criterion(model(imgs), tgts)
        total = sum(losses[k] * criterion.weight_dict[k] for k in losses if k in criterion.weight_dict)
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), model.grad_clip_max_norm)  # the originals' 0.1
        opt.step()
        history.append(total.item())
    assert all(torch.isfinite(torch.tensor(history)))
    first, last = history[0], sum(history[-3:]) / 3
    assert last < 0.6 * first, f"loss did not fall enough: {history}"
