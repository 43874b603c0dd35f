"""`enact-bench make-toy-coco DIR`: write the toy shapes dataset in the COCO 2017 layout."""
from __future__ import annotations

from pathlib import Path

import typer

from enact_bench.commands import output_folder, user_errors
from enact_bench.errors import UserInputError


def make_toy_coco_command(out_dir: str | Path, *, images: int = 48, seed: int = 0, categories: int = 3,
                          min_side: int = 160, max_side: int = 320, overwrite: bool = False) -> dict[str, int]:
    from enact_bench.data.toy_coco import ToyCocoConfig, make_toy_coco

    try:
        cfg = ToyCocoConfig(images=images, seed=seed, categories=categories, min_side_px=min_side,
                            max_side_px=max_side)
    except ValueError as e:
        raise UserInputError(str(e)) from None
    out = output_folder(out_dir, "make-toy-coco")
    try:
        return make_toy_coco(out, cfg, overwrite=overwrite)
    except FileExistsError as e:
        raise UserInputError(f"make-toy-coco: {e}; it may be a real dataset: give an empty or new folder, "
                             "or pass --overwrite to replace those files") from None
    except OSError as e:
        raise UserInputError(f"make-toy-coco {out_dir}: cannot write there ({e.strerror or e}); "
                             "expected a folder you can write to") from None


def register(app: typer.Typer) -> None:
    @app.command("make-toy-coco")
    @user_errors
    def make_toy_coco(
        out_dir: Path = typer.Argument(..., help="folder that receives annotations/, train2017/, val2017/"),
        images: int = typer.Option(48, help="images in all (a quarter go to val)"),
        seed: int = typer.Option(0, help="same seed, same files"),
        categories: int = typer.Option(3, help="1..3: rectangle, ellipse, triangle (COCO ids 1, 2, 3)"),
        min_side: int = typer.Option(160, help="smallest image side in pixels"),
        max_side: int = typer.Option(320, help="largest image side in pixels"),
        overwrite: bool = typer.Option(False, "--overwrite", help="write into a folder that already holds "
                                       "annotations or images, replacing files of the same names"),
    ) -> None:
        """Write a toy COCO-format dataset (shapes on textured backgrounds, exact annotations)."""
        from enact_bench.console import console

        counts = make_toy_coco_command(out_dir, images=images, seed=seed, categories=categories,
                                       min_side=min_side, max_side=max_side, overwrite=overwrite)
        console.print(f"{out_dir}: train {counts['train_images']} images / {counts['train_annotations']} "
                      f"objects, val {counts['val_images']} images / {counts['val_annotations']} objects",
                      highlight=False)
