"""The protocol's figures, composed from the runs' own pictures (the last epoch's ``samples_epochNNN.png`` of
the selected setting, seed 0): ``samples.png`` in the paper's Table 1 layout (a row per method, a column per
image data set) and ``densities.png`` in its Table 5 layout (a row per 2-D data set, a column per method)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, ImageDraw, ImageFont

from ..data import IMAGE_DATASETS

if TYPE_CHECKING:
    from .protocol import ExperimentConfig

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
            picture = cells.get((row, column))
            box = (LABEL_WIDTH + j * CELL + 2, top + 2)
            if picture is None:
                draw.rectangle([box, (box[0] + CELL - 5, box[1] + CELL - 5)], fill=EMPTY)
                continue
            with Image.open(picture) as image:
                canvas.paste(image.convert("RGB").resize((CELL - 4, CELL - 4), Image.NEAREST), box)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def write_figures(root: Path, selected: dict[tuple[str, str], tuple[float, int]],
                  config: ExperimentConfig) -> list[Path]:
    """Writes ``samples.png`` (if there are image data sets) and ``densities.png`` (if there are 2-D sets)
    into ``root``; returns the paths written."""
    from .protocol import RunSpec

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
        cells = {(m, d): picture(d, m) for m in methods for d in images}
        compose(cells, methods, images, root / "samples.png")
        written.append(root / "samples.png")
    if planar:
        methods = [m for m in config.methods if any((d, m) in selected for d in planar)]
        cells = {(d, m): picture(d, m) for d in planar for m in methods}
        compose(cells, planar, methods, root / "densities.png")
        written.append(root / "densities.png")
    return written
