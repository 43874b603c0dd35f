"""Another project's CI gating its own model's memory (docs/regress.md, "Your own model in the
gate"): from a folder of its own, a factory file and a suite naming it, `enact-bench run` then
`enact-bench check --update` writes the baseline, the same code passes, and a model that keeps
more memory fails naming the metric."""
from __future__ import annotations

import json

from typer.testing import CliRunner

from enact_bench.cli import app

MODEL = """
from torch import nn

class Model(nn.Module):
    # HF's convention: forward(pixel_values, pixel_mask=None, labels=None) -> a dict with "loss"
    def __init__(self, width):
        super().__init__()
        self.backbone = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.head = nn.Linear(width, 4)

    def forward(self, pixel_values, pixel_mask=None, labels=None):
        boxes = self.head(self.backbone(pixel_values).relu().mean((2, 3))).sigmoid()  # (B, 4)
        out = {"pred_boxes": boxes[:, None], "logits": boxes[:, None, :3]}
        if labels is not None:
            out["loss"] = sum((boxes[i] - t["boxes"][0]).abs().sum() for i, t in enumerate(labels))
        return out

def build(width=WIDTH):
    return Model(width)
"""

SUITE = """
name = "my-gate"
description = "our detector's training memory"
[defaults]
detector = "models/my_model.py:build"
device = "cpu"
mode = "train"
data = "synthetic"
image_size = "64x96"
batch_size = 2
num_classes = 2
warmup = 1
iters = 1
cpu_threads = 1

[[matrix]]
fake = false

[[matrix]]
fake = true
target = "cpu"
"""


def _project(root, width: int):
    (root / "models").mkdir(parents=True)
    (root / "models" / "my_model.py").write_text(MODEL.replace("WIDTH", str(width)))
    (root / "gate.toml").write_text(SUITE)


def _run(cli, name):
    result = cli.invoke(app, ["run", "--suite", "gate.toml", "--out", "reports", "--run-id", name, "--inline"])
    assert result.exit_code == 0, result.output
    return f"reports/{name}"


def test_a_projects_ci_gates_its_own_factory_model(tmp_path, monkeypatch):
    cli = CliRunner()
    ours = tmp_path / "ours"
    _project(ours, width=8)
    monkeypatch.chdir(ours)
    base = _run(cli, "base")
    result = cli.invoke(app, ["check", base, "--baseline", "gate-baseline.json", "--update"])
    assert result.exit_code == 0, result.output
    cases = json.loads((ours / "gate-baseline.json").read_text())["cases"]
    assert len(cases) == 2 and all(c.startswith("models/my_model.py:build-base-train") for c in cases)

    result = cli.invoke(app, ["check", _run(cli, "same"), "--baseline", "gate-baseline.json"])
    assert result.exit_code == 0, result.output

    # the same project a commit later: a wider backbone keeps more memory, the gate fails on it
    later = tmp_path / "later"
    _project(later, width=64)
    (later / "gate-baseline.json").write_text((ours / "gate-baseline.json").read_text())
    monkeypatch.chdir(later)
    result = cli.invoke(app, ["check", _run(cli, "wider"), "--baseline", "gate-baseline.json"])
    assert result.exit_code == 1, result.output
    assert "cpu_tracked_peak_bytes" in result.output and "fake_tracked_peak_bytes" in result.output
