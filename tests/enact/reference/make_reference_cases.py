"""Write tests/enact/reference/enact_small_cases.pt: small cases computed by the released ENACT code.

    python tests/enact/reference/make_reference_cases.py RELEASE_DIR [OUT]

RELEASE_DIR is a checkout of GSavathrakis/ENACT (for example `git archive` of commit 360b9cc into
/tmp). The release's own ClustAttn and TransformerEncoderLayer are imported from
RELEASE_DIR/DETR-ENACT/models and run as they are; this script only makes inputs, runs them, and
records what they compute. Intermediates are observed, not recomputed: forward hooks on the
release's W_prob / W_k / W_v / W_o, and recording wrappers around the functions its module calls
(F.softmax, F.conv1d, STEFunction.apply, np.mean), in call order.
Nothing here is part of the package; the tests only read the file it writes.
"""
from __future__ import annotations

import datetime
import importlib
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import torch

# (name, sigma, B, H, W, padded image: (index, valid h, valid w) or None); d_model 16, 2 heads, FFN 32
CASES = [
    ("s3_b2_10x13", 3.0, 2, 10, 13, (1, 8, 10)),
    ("s5_b3_8x11", 5.0, 3, 8, 11, (2, 6, 9)),
    ("s3_b1_6x7", 3.0, 1, 6, 7, None),
]
C, HEADS, FFN = 16, 2, 32


def _import_release(release: Path):
    models = release / "DETR-ENACT" / "models"
    if not (models / "ENACT_attn" / "enact.py").is_file():
        raise SystemExit(f"{release}: no DETR-ENACT/models/ENACT_attn/enact.py (expected a GSavathrakis/ENACT checkout)")
    pkg = types.ModuleType("enact_release")  # stands for DETR-ENACT/models without running its __init__
    pkg.__path__ = [str(models)]
    sys.modules["enact_release"] = pkg
    return (importlib.import_module("enact_release.ENACT_attn.enact"),
            importlib.import_module("enact_release.transformer"))


class _Recorder:
    """Wraps F / np / STEFunction inside the release module and keeps each call's result."""

    def __init__(self, mod):
        self.mod, self.calls = mod, []
        real_f, real_np, real_ste = mod.F, mod.np, mod.STEFunction
        rec = self

        class F:
            def __getattr__(self, name):
                fn = getattr(real_f, name)
                if name not in ("softmax", "conv1d"):
                    return fn
                return lambda *a, **k: rec._keep(name, fn(*a, **k))

        class NP:
            def __getattr__(self, name):
                fn = getattr(real_np, name)
                if name != "mean":
                    return fn
                return lambda x, *a, **k: (rec._keep("np.mean.arg", list(x)), fn(x, *a, **k))[1]

        class STE:
            @staticmethod
            def apply(x):
                return rec._keep("step", real_ste.apply(x))

        self.saved = (real_f, real_np, real_ste)
        mod.F, mod.np, mod.STEFunction = F(), NP(), STE

    def _keep(self, name, value):
        self.calls.append((name, value.detach().clone() if isinstance(value, torch.Tensor) else value))
        return value

    def restore(self):
        self.mod.F, self.mod.np, self.mod.STEFunction = self.saved

    def of(self, name):
        return [v for n, v in self.calls if n == name]


def _sine_pos(mask: torch.Tensor, feats: int) -> torch.Tensor:
    """(B, H, W) mask -> (B, 2*feats, H, W): DETR's normalised sine embedding (our own implementation)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from enact_bench.detectors.common.position import PositionEmbeddingSine

    return PositionEmbeddingSine(feats, normalize=True)(mask)


def make_case(enact_mod, transformer_mod, name, sigma, B, H, W, padded):
    g = torch.Generator().manual_seed(1234)
    src = torch.randn(B, C, H, W, generator=g)
    mask = torch.zeros(B, H, W, dtype=torch.bool)
    if padded:
        i, h, w = padded
        mask[i, h:, :] = True
        mask[i, :, w:] = True
    pos = _sine_pos(mask, C // 2)
    q = (src + pos).flatten(2).permute(2, 0, 1)  # (B, C, H, W) -> (S, B, C)
    k = q
    v = src.flatten(2).permute(2, 0, 1)

    torch.manual_seed(0)
    module = enact_mod.ClustAttn(sigma, C, 0.1, HEADS, "cpu")
    seen = {}
    hooks = [module.W_prob.register_forward_hook(lambda m, a, out: seen.__setitem__("W_prob_logits", out.detach().clone())),
             module.W_k.register_forward_pre_hook(lambda m, a: seen.__setitem__("k_clustered_pre_proj", a[0].detach().clone())),
             module.W_v.register_forward_pre_hook(lambda m, a: seen.__setitem__("v_clustered_pre_proj", a[0].detach().clone())),
             module.W_o.register_forward_pre_hook(lambda m, a: seen.__setitem__("W_o_in", a[0].detach().clone()))]
    rec = _Recorder(enact_mod)
    try:
        out = module(q, k, v, H, W)
    finally:
        rec.restore()
        for h in hooks:
            h.remove()
    softmaxes, convs = rec.of("softmax"), rec.of("conv1d")
    weights = softmaxes[1]  # (B, n, L): the window weights
    S, L, n = H * W, weights.shape[-1], weights.shape[1]
    front = (S % L) // 2
    intermediates = {
        "W_prob_logits": seen["W_prob_logits"],  # (B, S, 1)
        "prob_k_softmax_before_eps": softmaxes[0],  # (B, S)
        "entropy_smoothed": convs[0].squeeze(1),  # (B, S)
        "second_derivative_conv": convs[1].squeeze(1),
        "step": rec.of("step")[0].long(),
        "per_image_mean_run_length": torch.tensor(rec.of("np.mean.arg")[0], dtype=torch.float64),
        "clst_sh": int(L), "trim_front": int(front), "trim_back": int(S - front - n * L), "n_clusters": int(n),
        "cluster_weights": weights,
        "k_clustered_pre_proj": seen["k_clustered_pre_proj"], "v_clustered_pre_proj": seen["v_clustered_pre_proj"],
        "attn_softmax_before_div_dhead": softmaxes[2],  # (heads, B, S, n)
        "W_o_in": seen["W_o_in"],
    }
    module.zero_grad()
    module(q, k, v, H, W).pow(2).mean().backward()
    grads = {n_: p.grad.detach().clone() for n_, p in module.named_parameters()}

    torch.manual_seed(1)
    layer = transformer_mod.TransformerEncoderLayer("cpu", sigma, C, HEADS, FFN, 0.1, "relu").eval()
    with torch.no_grad():
        layer_out = layer(q, k, v, H, W)
    return {
        "meta": {"name": name, "ctor": {"sigma": sigma, "d_model": C, "dropout": 0.1, "n_heads": HEADS, "device": "cpu"},
                 "layer_ctor": {"device": "cpu", "sigma": sigma, "d_model": C, "nhead": HEADS, "dim_feedforward": FFN,
                                "dropout": 0.1, "activation": "relu"},
                 "B": B, "C": C, "H": H, "W": W, "padded": list(padded) if padded else None,
                 "seeds": {"input_generator": 1234, "module_init": 0, "layer_init": 1},
                 "call": "out = ClustAttn(q, k, v, h, w) with q=k=src+pos, v=src, all (HW,B,C)"},
        "inputs": {"src": src, "pos": pos, "mask": mask, "q": q, "k": k, "v": v},
        "output": out.detach(),
        "state_dict": {k_: t.detach().clone() for k_, t in module.state_dict().items()},
        "non_buffer_constants": {"gaussian_kernel": module.gaussian_kernel.clone()},
        "intermediates": intermediates,
        "grads_loss_mean_out_sq": grads,
        "layer": {"state_dict": {k_: t.clone() for k_, t in layer.state_dict().items()}, "output_eval": layer_out},
    }


def main(argv: list[str]) -> None:
    if not argv:
        raise SystemExit(__doc__)
    release = Path(argv[0]).resolve()
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).with_name("enact_small_cases.pt")
    enact_mod, transformer_mod = _import_release(release)
    torch.set_num_threads(1)
    commit = subprocess.run(["git", "-C", str(release), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    cases = {name: make_case(enact_mod, transformer_mod, name, *rest) for name, *rest in CASES}
    doc = {"meta": {"source_repo": "GSavathrakis/ENACT", "source_commit": commit or "(not a git checkout)",
                    "module_file": "DETR-ENACT/models/ENACT_attn/enact.py (ClustAttn), DETR-ENACT/models/transformer.py "
                                   "(TransformerEncoderLayer)",
                    "torch": str(torch.__version__), "numpy": str(np.__version__),
                    "date": datetime.date.today().isoformat()},
           "cases": cases}
    torch.save(doc, out)
    for name, c in cases.items():
        m = c["intermediates"]
        print(f"{name}: L={m['clst_sh']} n={m['n_clusters']} trim={m['trim_front']}/{m['trim_back']} "
              f"means={c['intermediates']['per_image_mean_run_length'].tolist()}")
    print(f"{out}: {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main(sys.argv[1:])
