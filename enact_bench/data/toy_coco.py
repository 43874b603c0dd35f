"""A small COCO-format dataset of coloured shapes on textured backgrounds (no download needed).

``make_toy_coco(DIR)`` writes the COCO 2017 layout (DIR/annotations/instances_{train,val}2017.json,
DIR/{train,val}2017/*.jpg) with exact instance annotations: each shape is drawn into its own mask,
its bbox is the mask's pixel extent [x, y, w, h] and its area the mask's pixel count; shapes never
overlap, so no annotation is hidden by another shape. The same arguments give the same files.
A folder that already holds COCO annotations or images is refused (FileExistsError) unless
`overwrite=True`: it may be a real dataset.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("rectangle", "ellipse", "triangle")  # category ids 1, 2, 3


@dataclass(frozen=True)
class ToyCocoConfig:
    images: int = 48
    seed: int = 0
    val_fraction: float = 0.25
    min_side_px: int = 160
    max_side_px: int = 320
    categories: int = 3              # the first k of SHAPES
    objects_per_image: tuple[int, int] = (1, 4)
    object_frac: tuple[float, float] = (0.15, 0.45)  # shape extent / shorter image side
    jpeg_quality: int = 92

    def __post_init__(self):
        if self.images < 2:
            raise ValueError(f"images must be >= 2 (one train and one val), got {self.images}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if not 32 <= self.min_side_px <= self.max_side_px:
            raise ValueError(f"need 32 <= min_side_px <= max_side_px, got {self.min_side_px}, {self.max_side_px}")
        if not 1 <= self.categories <= len(SHAPES):
            raise ValueError(f"categories must be 1..{len(SHAPES)}, got {self.categories}")
        lo, hi = self.objects_per_image
        if not 1 <= lo <= hi:
            raise ValueError(f"objects_per_image must be (lo, hi) with 1 <= lo <= hi, got {self.objects_per_image}")
        flo, fhi = self.object_frac
        if not 0.05 <= flo <= fhi <= 0.9:
            raise ValueError(f"object_frac must satisfy 0.05 <= lo <= hi <= 0.9, got {self.object_frac}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour noise + stripes + grain: (h, w, 3) uint8."""
    grid = rng.uniform(40, 200, size=(4, 5, 3)).astype(np.float32)
    low = np.asarray(Image.fromarray(grid.astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle, period = rng.uniform(0, math.pi), rng.uniform(6, 24)
    stripes = 18 * np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * 2 * math.pi / period)
    grain = rng.normal(0, 8, size=(h, w, 3))
    return np.clip(low + stripes[..., None] + grain, 0, 255).astype(np.uint8)


def _outline(shape: str, x0: float, y0: float, sw: float, sh: float, rng) -> list[tuple[float, float]]:
    if shape == "rectangle":
        return [(x0, y0), (x0 + sw, y0), (x0 + sw, y0 + sh), (x0, y0 + sh)]
    if shape == "triangle":
        apex = x0 + rng.uniform(0.2, 0.8) * sw
        return [(apex, y0), (x0 + sw, y0 + sh), (x0, y0 + sh)]
    cx, cy, rx, ry = x0 + sw / 2, y0 + sh / 2, sw / 2, sh / 2
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in np.linspace(0, 2 * math.pi, 24, endpoint=False)]


def _place(rng, h: int, w: int, cfg: ToyCocoConfig, taken: list[tuple[int, int, int, int]]):
    """A box (x0, y0, w, h) that keeps a 2-pixel gap to every taken box, or None after 50 tries."""
    short = min(h, w)
    for _ in range(50):
        sw = int(short * rng.uniform(*cfg.object_frac))
        sh = int(short * rng.uniform(*cfg.object_frac))
        x0, y0 = int(rng.integers(1, w - sw - 1)), int(rng.integers(1, h - sh - 1))
        if all(x0 + sw + 2 < a or a + c + 2 < x0 or y0 + sh + 2 < b or b + d + 2 < y0 for a, b, c, d in taken):
            return x0, y0, sw, sh
    return None


def _draw_image(rng, cfg: ToyCocoConfig, image_id: int, first_ann_id: int):
    h = int(rng.integers(cfg.min_side_px, cfg.max_side_px + 1))
    w = int(rng.integers(cfg.min_side_px, cfg.max_side_px + 1))
    canvas = Image.fromarray(_background(rng, h, w))
    draw = ImageDraw.Draw(canvas)
    taken, anns = [], []
    for _ in range(int(rng.integers(cfg.objects_per_image[0], cfg.objects_per_image[1] + 1))):
        box = _place(rng, h, w, cfg, taken)
        if box is None:
            continue
        taken.append(box)
        cat = int(rng.integers(cfg.categories))
        points = _outline(SHAPES[cat], *box, rng)
        mask = Image.new("L", (w, h), 0)
        ImageDraw.Draw(mask).polygon(points, fill=255)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.polygon(points, fill=colour, outline=tuple(255 - c for c in colour))
        m = np.asarray(mask) > 0
        ys, xs = np.nonzero(m)
        anns.append({
            "id": first_ann_id + len(anns), "image_id": image_id, "category_id": cat + 1,
            "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)],
            "area": int(m.sum()), "iscrowd": 0,
            "segmentation": [[round(v, 2) for p in points for v in p]],
        })
    return canvas, {"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": h, "width": w}, anns


SPLITS = ("train", "val")


def existing_dataset(out_dir: str | Path) -> list[str]:
    """What of a COCO 2017 layout `out_dir` already holds: its annotation files, and its image
    folders that are not empty (as "train2017/ (40 files)"). Empty when there is none."""
    out = Path(out_dir)
    found = [f"annotations/instances_{s}2017.json" for s in SPLITS
             if (out / "annotations" / f"instances_{s}2017.json").exists()]
    for s in SPLITS:
        folder = out / f"{s}2017"
        n = sum(1 for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0
        if n:
            found.append(f"{s}2017/ ({n} file{'s' if n != 1 else ''})")
    return found


def make_toy_coco(out_dir: str | Path, config: ToyCocoConfig | None = None, *, overwrite: bool = False,
                  **kwargs) -> dict[str, int]:
    """Write the dataset; returns counts {train_images, val_images, train_annotations, val_annotations}.
    Raises FileExistsError when `out_dir` already holds annotations or images (see
    existing_dataset), unless `overwrite`."""
    cfg = config or ToyCocoConfig(**kwargs)
    out = Path(out_dir)
    found = existing_dataset(out)
    if found and not overwrite:
        raise FileExistsError(f"{out} already holds a COCO-style dataset ({', '.join(found)})")
    rng = np.random.default_rng(cfg.seed)
    n_val = max(1, int(round(cfg.images * cfg.val_fraction)))
    categories = [{"id": i + 1, "name": SHAPES[i], "supercategory": "shape"} for i in range(cfg.categories)]
    splits = {"train": {"images": [], "annotations": []}, "val": {"images": [], "annotations": []}}
    next_ann = 1
    for image_id in range(1, cfg.images + 1):
        split = "val" if image_id > cfg.images - n_val else "train"
        canvas, info, anns = _draw_image(rng, cfg, image_id, next_ann)
        next_ann += len(anns)
        folder = out / f"{split}2017"
        folder.mkdir(parents=True, exist_ok=True)
        canvas.save(folder / info["file_name"], format="JPEG", quality=cfg.jpeg_quality)
        splits[split]["images"].append(info)
        splits[split]["annotations"].extend(anns)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, data in splits.items():
        doc = {"info": {"description": "enact-bench toy shapes", "config": asdict(cfg)}, "licenses": [],
               "images": data["images"], "annotations": data["annotations"], "categories": categories}
        (out / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(doc))
        counts[f"{split}_images"] = len(data["images"])
        counts[f"{split}_annotations"] = len(data["annotations"])
    return counts
