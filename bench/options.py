"""The options the benchmark commands share: which model, on which images, how many rounds."""

from __future__ import annotations

from pathlib import Path

import click

model_option = click.option("--model", default="yolov3-tiny", show_default=True, help="Model to benchmark.")
images_option = click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                             default=Path("tests/data"), show_default=True, help="Directory of JPEG sample images.")
rounds_option = click.option("--rounds", default=3, show_default=True, type=click.IntRange(1, 20),
                             help="Rounds of every load; each ratio is the median of its rounds.")
