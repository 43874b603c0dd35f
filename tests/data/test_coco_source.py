"""The coco/toy data sources, the coco evaluation hook and the CLI's case edits, through enact_bench.run."""
import hashlib
import json
import os

import pytest
import torch

from enact_bench.suite.edits import CaseEdits, CheckpointSpec
from enact_bench.commands.run import run_command
from enact_bench.data.coco_source import CocoSource
from enact_bench.detectors import create_detector
from enact_bench.errors import UserInputError
from enact_bench.records import read_records
from enact_bench.run.case import run_case
from enact_bench.run.run_dir import edit_suite
from enact_bench.suite import Case, load_suite

CHEAP = [("iters", [1]), ("warmup", [1]), ("flops", [False])]


@pytest.mark.slow
def test_toy_suite_runs_end_to_end_with_evaluation(tmp_path):
    """The shipped toy-detr suite (fewer steps), inline, on CPU: every case ok, mAP recorded."""
    suite = load_suite("toy-detr", CHEAP + [("data_options.eval_train_steps", [2]), ("device", ["cpu"])])
    assert len(suite.cases) == 4
    result = run_command("toy-detr", out=tmp_path, inline=True,
                         overrides=CHEAP + [("data_options.eval_train_steps", [2]), ("device", ["cpu"])],
                         edits=CaseEdits.from_options(max_images=4))
    records = read_records(result.run_dir / "records.jsonl")
    assert [r.status for r in records] == ["ok"] * 4, [r.error for r in records]
    infer = [r for r in records if r.case["mode"] == "infer"]
    assert {r.case["enact"] for r in infer} == {False, True}
    for r in infer:
        coco = r.metrics["coco"]
        assert coco["images"] == 4 and coco["train_steps"] == 2 and 0.0 <= coco["map"] <= 1.0
        assert r.case["annotation_file"].endswith("instances_val2017.json") and r.case["data_images"] == 4
        assert r.metrics["step_ms_p50"] > 0
    train = [r for r in records if r.case["mode"] == "train"]
    assert all("coco" not in r.metrics or r.metrics["coco"] is None for r in train)
    assert all(r.case["annotation_file"].endswith("instances_train2017.json") for r in train)
    assert json.loads((result.run_dir / "run.json").read_text())["case_edits"]["max_images"] == 4


def test_batches_are_seeded_full_and_in_original_coordinates(toy_root):
    case = Case(detector="detr_tiny", data="toy", mode="train", batch_size=3, num_classes=4,
                data_options={"root": str(toy_root), "size_scale": 0.2, "max_images": 4})
    src = CocoSource(case)
    a, b, c = src.batch(1), src.batch(1), src.batch(2)
    assert len(a.images) == 3 and a.image_ids == b.image_ids
    assert all(torch.equal(x, y) for x, y in zip(a.images, b.images))
    assert a.sizes.tolist() == [t["orig_size"].tolist() for t in a.targets]
    assert c.image_ids != a.image_ids or any(not torch.equal(x, y) for x, y in zip(a.images, c.images))
    with pytest.raises(ValueError, match="num_classes = 2 is too small"):
        CocoSource(Case(detector="detr_tiny", data="toy", mode="infer", num_classes=2,
                        data_options={"root": str(toy_root)}))


@pytest.mark.slow
def test_checkpoint_per_variant_is_loaded_and_hashed(tmp_path, toy_root):
    torch.manual_seed(1)
    model = create_detector("detr_tiny", num_classes=4)
    path = tmp_path / "tiny.pth"
    torch.save({"model": model.state_dict()}, path)
    suite = load_suite("toy-detr", CHEAP + [("data_options.root", [str(toy_root)]), ("device", ["cpu"])])
    edited = CaseEdits.from_options([f"detr_tiny={path}"]).apply(suite)
    with_ckpt = [c for c in edited.cases if c.checkpoint]
    assert with_ckpt and all(not c.enact for c in with_ckpt)
    assert all(c.checkpoint is None for c in edited.cases if c.enact)
    case = next(c for c in with_ckpt if c.mode == "train")
    case = type(case).from_dict({**case.to_dict(), "num_classes": 4})
    rec = run_case(case)
    assert rec.status == "ok", rec.error
    assert rec.case["checkpoint"] == str(path.resolve())
    assert rec.case["checkpoint_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_checkpoint_and_coco_options_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserInputError, match="DETECTOR=PATH"):
        CheckpointSpec.parse("detr_r50")
    with pytest.raises(UserInputError, match="must be 'enact'"):
        CheckpointSpec.parse(f"detr_r50+fast={tmp_path}")
    with pytest.raises(UserInputError, match=str(tmp_path / "none.pth")):
        CheckpointSpec.parse(f"detr_r50={tmp_path / 'none.pth'}")
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    with pytest.raises(UserInputError, match="not a PyTorch checkpoint"):
        CheckpointSpec.parse(f"detr_r50={f}")
    import torch
    torch.save({"model": {}}, f)
    with pytest.raises(UserInputError, match="variants: detr_tiny, detr_tiny\\+enact"):
        CaseEdits.from_options([f"detr_r50={f}"]).apply(load_suite("toy-detr"))
    monkeypatch.delenv("ENACT_BENCH_COCO", raising=False)
    with pytest.raises(UserInputError, match="--coco-root DIR or set ENACT_BENCH_COCO"):
        edit_suite(load_suite("coco-detr"), CaseEdits())
    with pytest.raises(UserInputError, match=str(tmp_path / "annotations" / "instances_val2017.json")):
        edit_suite(load_suite("coco-detr"), CaseEdits.from_options(coco_root=tmp_path))


def test_case_edits_apply_touches_no_environment_and_no_files(tmp_path, monkeypatch):
    monkeypatch.delenv("ENACT_BENCH_COCO", raising=False)
    edits = CaseEdits.from_options(coco_root=tmp_path / "not-there", max_images=3)
    suite = edits.apply(load_suite("coco-detr"))  # no COCO files are read: no error here
    assert "ENACT_BENCH_COCO" not in os.environ
    assert edits.environment() == {"ENACT_BENCH_COCO": str((tmp_path / "not-there").resolve())}
    assert all(c.data_options["max_images"] == 3 for c in suite.cases)
