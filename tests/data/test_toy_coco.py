import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from enact_bench.data.toy_coco import make_toy_coco


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout_and_exact_annotations(toy_root):
    train = json.loads((toy_root / "annotations" / "instances_train2017.json").read_text())
    val = json.loads((toy_root / "annotations" / "instances_val2017.json").read_text())
    assert len(train["images"]) == 9 and len(val["images"]) == 3
    assert {c["id"] for c in train["categories"]} == {1, 2, 3}
    ids = [i["id"] for i in train["images"] + val["images"]]
    assert len(set(ids)) == 12
    for doc, split in ((train, "train"), (val, "val")):
        images = {i["id"]: i for i in doc["images"]}
        for a in doc["annotations"]:
            info = images[a["image_id"]]
            img = Image.open(toy_root / f"{split}2017" / info["file_name"])
            assert img.size == (info["width"], info["height"]) and img.format == "JPEG"
            x, y, w, h = a["bbox"]
            assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h
            assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
            # The polygon's extent agrees with the bbox to the rasterisation (a pixel).
            pts = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(pts.min(0), [x, y], atol=1.01)
            assert np.allclose(pts.max(0), [x + w - 1, y + h - 1], atol=1.01)


def test_same_seed_same_files_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    kw = dict(images=4, min_side_px=64, max_side_px=80)
    make_toy_coco(a, seed=1, **kw)
    make_toy_coco(b, seed=1, **kw)
    make_toy_coco(c, seed=2, **kw)
    assert _digest(a) == _digest(b) != _digest(c)


def test_bad_config_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="categories"):
        make_toy_coco(tmp_path, images=4, categories=5)


@pytest.mark.parametrize("existing", ["annotations/instances_train2017.json", "val2017/000000000001.jpg"])
def test_a_folder_holding_a_dataset_is_refused_unless_overwrite(tmp_path, existing):
    # make-toy-coco into an existing COCO-style folder silently replaced its annotations and images
    from typer.testing import CliRunner

    from enact_bench.cli import app

    held = tmp_path / existing
    held.parent.mkdir(parents=True)
    held.write_bytes(b"the user's own file")
    cli = CliRunner()
    res = cli.invoke(app, ["make-toy-coco", str(tmp_path), "--images", "4", "--min-side", "64", "--max-side", "80"])
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert "already holds a COCO-style dataset" in lines[0] and "--overwrite" in lines[0]
    assert held.read_bytes() == b"the user's own file"
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [existing]
    res = cli.invoke(app, ["make-toy-coco", str(tmp_path), "--images", "4", "--min-side", "64", "--max-side", "80",
                           "--overwrite"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "annotations" / "instances_train2017.json").read_text())["images"]


def test_an_empty_or_unrelated_folder_is_written(tmp_path):
    (tmp_path / "notes.txt").write_text("not a dataset")
    (tmp_path / "train2017").mkdir()  # an empty image folder holds nothing to lose
    counts = make_toy_coco(tmp_path, images=4, min_side_px=64, max_side_px=80)
    assert counts["train_images"] + counts["val_images"] == 4
