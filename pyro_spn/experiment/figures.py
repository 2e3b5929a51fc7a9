"""The protocol's figures, composed from the runs' own pictures (the last epoch's ``samples_epochNNN.png`` of
the selected setting, seed 0): ``samples.png`` in the paper's Table 1 layout (a row per method, a column per
image data set; for a single image data set, the methods' pictures side by side, a few per row) and
``densities.png`` in its Table 5 layout (a row per 2-D data set, a column per method)."""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from .. import atomic
from ..data import IMAGE_DATASETS
from .config import ExperimentConfig, RunSpec

CELL = 224  # pixels per cell side
LABEL_WIDTH = 150  # pixels of the row-label column
LABEL_HEIGHT = 34  # pixels of the column-label row
FONT_SIZE = 20  # pixels, so labels stay readable when the figure is shrunk
BACKGROUND = (255, 255, 255)
EMPTY = (235, 235, 235)


def last_picture(run: Path) -> Path | None:
    """The last epoch's picture of a run folder, or ``None`` if it has none."""
    pictures = sorted(run.glob("samples_epoch*.png"))
    return pictures[-1] if pictures else None


def _paste(canvas: Image.Image, draw: ImageDraw.ImageDraw, picture: Path | None, box: tuple[int, int]) -> None:
    """``picture`` resized into the cell whose top-left corner is ``box`` (a grey square if ``None``)."""
    if picture is None:
        draw.rectangle([box, (box[0] + CELL - 5, box[1] + CELL - 5)], fill=EMPTY)
        return
    with Image.open(picture) as image:
        canvas.paste(image.convert("RGB").resize((CELL - 4, CELL - 4), Image.Resampling.NEAREST), box)


def tile(cells: list[tuple[str, Path | None]], columns: int, path: Path) -> None:
    """Labeled pictures ``(label, picture)`` side by side, ``columns`` per row, each resized to ``CELL × CELL``
    under its label (missing pictures grey), written to ``path`` (PNG)."""
    rows = -(-len(cells) // columns)
    canvas = Image.new("RGB", (CELL * columns, (LABEL_HEIGHT + CELL) * rows), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    for number, (label, picture) in enumerate(cells):
        left, top = CELL * (number % columns), (LABEL_HEIGHT + CELL) * (number // columns)
        draw.text((left + 6, top + 6), label, fill=(0, 0, 0), font=font)
        _paste(canvas, draw, picture, (left + 2, top + LABEL_HEIGHT + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomically(path, lambda temp: canvas.save(temp, format="PNG"))


def compose(cells: dict[tuple[str, str], Path | None], rows: list[str], columns: list[str], path: Path) -> None:
    """A labeled grid of pictures: ``cells[(row, column)]`` resized to ``CELL × CELL`` (missing cells grey),
    row labels on the left, column labels on top, written to ``path`` (PNG)."""
    width, height = LABEL_WIDTH + CELL * len(columns), LABEL_HEIGHT + CELL * len(rows)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=FONT_SIZE)
    for j, column in enumerate(columns):
        draw.text((LABEL_WIDTH + j * CELL + 6, 6), column, fill=(0, 0, 0), font=font)
    for i, row in enumerate(rows):
        top = LABEL_HEIGHT + i * CELL
        draw.text((6, top + CELL // 2 - FONT_SIZE // 2), row, fill=(0, 0, 0), font=font)
        for j, column in enumerate(columns):
            _paste(canvas, draw, cells.get((row, column)), (LABEL_WIDTH + j * CELL + 2, top + 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_atomically(path, lambda temp: canvas.save(temp, format="PNG"))


def write_figures(root: Path, selected: dict[tuple[str, str], tuple[float, int]],
                  config: ExperimentConfig) -> list[Path]:
    """Writes ``samples.png`` (if there are image data sets) and ``densities.png`` (if there are 2-D sets)
    into ``root``; returns the paths written."""
    def picture(dataset: str, method: str) -> Path | None:
        if (dataset, method) not in selected:
            return None
        lr, batch_size = selected[(dataset, method)]
        return last_picture(RunSpec(dataset, method, lr, batch_size, 0).folder(config))

    written = []
    images = [d for d in config.datasets if d in IMAGE_DATASETS]
    planar = [d for d in config.datasets if d not in IMAGE_DATASETS]
    if images:
        methods = [m for m in config.methods if any((d, m) in selected for d in images)]
        if len(images) == 1:
            tile([(m, picture(images[0], m)) for m in methods], math.ceil(math.sqrt(len(methods))),
                 root / "samples.png")
        else:
            compose({(m, d): picture(d, m) for m in methods for d in images}, methods, images, root / "samples.png")
        written.append(root / "samples.png")
    if planar:
        methods = [m for m in config.methods if any((d, m) in selected for d in planar)]
        cells = {(d, m): picture(d, m) for d in planar for m in methods}
        compose(cells, planar, methods, root / "densities.png")
        written.append(root / "densities.png")
    return written
