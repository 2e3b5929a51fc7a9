"""PNG pictures of a model, drawn with torchvision only: image grids, 2-D density heatmaps, inpainting tables.

Every picture names what wrote it in its ``Software`` text chunk (:func:`picture_software`), so that a command
replaces only pictures it wrote itself."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image, PngImagePlugin
from torch import Tensor
from torchvision.utils import make_grid

from .. import atomic
from .records import SOFTWARE

# Anchor colors of the heatmap, low to high density (viridis' ends and three stops between them).
_ANCHORS = torch.tensor([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]],
                        dtype=torch.float32) / 255
DATA_COLOR = (1.0, 1.0, 1.0)
SAMPLE_COLOR = (1.0, 0.25, 0.25)
MISSING_COLOR = (0.6, 0.0, 0.0)
_MARGIN = 0.1  # of the data range, on every side of the density picture
SOFTWARE_CHUNK = "Software"  # the PNG text chunk naming what wrote a picture


def colormap(values: Tensor) -> Tensor:
    """Values in ``[0, 1]`` ``[*S]`` → RGB ``[*S, 3]`` in ``[0, 1]``, interpolating linearly between the anchors."""
    position = values.clamp(0, 1) * (len(_ANCHORS) - 1)
    low = position.floor().long().clamp(max=len(_ANCHORS) - 2)
    weight = (position - low)[..., None]
    return _ANCHORS[low] * (1 - weight) + _ANCHORS[low + 1] * weight


MIN_TILE = 32  # pixels: smaller images (8×8 digits) are enlarged, pixel for pixel, to at least this size


def _enlarge(images: Tensor) -> Tensor:
    """Nearest-neighbour enlargement of ``[N, C, H, W]`` images by an integer factor to ``>= MIN_TILE`` pixels."""
    factor = math.ceil(MIN_TILE / min(images.shape[-2:]))
    return images.repeat_interleave(factor, -2).repeat_interleave(factor, -1) if factor > 1 else images


def _save_png(picture: Tensor, path: Path, software: str) -> None:
    """Writes the RGB picture ``[3, H, W]`` (values in ``[0, 1]``) to ``path`` as a PNG naming ``software``,
    atomically."""
    pixels = picture.detach().cpu().mul(255).add(0.5).clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    info = PngImagePlugin.PngInfo()
    info.add_text(SOFTWARE_CHUNK, software)
    atomic.write_atomically(path, lambda temp: Image.fromarray(pixels).save(temp, format="PNG", pnginfo=info))


def picture_software(path: Path) -> str | None:
    """What wrote the PNG picture ``path`` (its ``Software`` text chunk), or ``None`` (none, or not a PNG)."""
    try:
        with Image.open(path) as picture:
            software = picture.info.get(SOFTWARE_CHUNK) if picture.format == "PNG" else None
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    return software if isinstance(software, str) else None


def save_image_grid(images: Tensor, path: Path, software: str = SOFTWARE) -> None:
    """Images ``[N, C, H, W]`` in ``[0, 1]`` as one roughly square grid (small images enlarged)."""
    images = _enlarge(images.detach().cpu().float())
    _save_png(make_grid(images, nrow=math.ceil(math.sqrt(images.shape[0])), padding=2, pad_value=0.5), path,
              software)


def _plot_points(picture: Tensor, points: Tensor, low: Tensor, high: Tensor, color: tuple[float, float, float]
                 ) -> None:
    """Draws ``points [M, 2]`` as 3 × 3 squares into ``picture [3, H, W]`` spanning ``[low, high]`` (y up)."""
    size = picture.shape[1]
    cells = ((points - low) / (high - low) * size).floor().long()
    inside = ((cells >= 0) & (cells < size)).all(1)
    column, row = cells[inside, 0], size - 1 - cells[inside, 1]
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            r, c = (row + dy).clamp(0, size - 1), (column + dx).clamp(0, size - 1)
            for channel, value in enumerate(color):
                picture[channel, r, c] = value


def save_density_picture(log_density: Callable[[Tensor], Tensor], path: Path, extent: Tensor,
                         samples: Tensor | None = None, data: Tensor | None = None, size: int = 256,
                         software: str = SOFTWARE) -> None:
    """A heatmap of ``exp(log_density)`` on a ``size × size`` grid, with data (white) and samples (red) as dots.

    Args:
        log_density: points ``[M, 2]`` → log-densities ``[M]``.
        path: the PNG file.
        extent: points ``[M, 2]`` whose bounding box (plus a 10 % margin) the picture spans.
        samples, data: points ``[M, 2]`` to draw, or ``None``.
        size: the picture's width and height in pixels.
        software: what wrote the picture (its ``Software`` text chunk).
    """
    extent = extent.detach().cpu().float()
    low, high = extent.min(0).values, extent.max(0).values
    margin = (high - low).clamp_min(1e-3) * _MARGIN
    low, high = low - margin, high + margin
    centers = [low[i] + (torch.arange(size) + 0.5) / size * (high[i] - low[i]) for i in range(2)]
    ys, xs = torch.meshgrid(centers[1].flip(0), centers[0], indexing="ij")  # row 0 is the top (largest y)
    grid = torch.stack([xs.flatten(), ys.flatten()], 1)
    log_p = torch.cat([log_density(chunk).detach().cpu().float() for chunk in grid.split(8192)])
    log_p = torch.nan_to_num(log_p, nan=-math.inf)
    density = (log_p - log_p.max()).exp() if torch.isfinite(log_p.max()) else torch.zeros_like(log_p)
    picture = colormap(density.reshape(size, size)).permute(2, 0, 1).contiguous()
    if data is not None:
        _plot_points(picture, data.detach().cpu().float(), low, high, DATA_COLOR)
    if samples is not None:
        _plot_points(picture, samples.detach().cpu().float(), low, high, SAMPLE_COLOR)
    _save_png(picture, path, software)


def histogram_log_density(samples: Tensor, extent: Tensor, bins: int = 64) -> Callable[[Tensor], Tensor]:
    """The log-density of a 2-D histogram of ``samples [M, 2]``, for models without a likelihood.

    The ``bins × bins`` cells span the bounding box of ``extent [K, 2]`` and of the samples, plus the
    picture's margin; the returned function maps points ``[P, 2]`` to ``log(count / (M · cell area))``
    ``[P]`` (``-inf`` in empty cells and outside).
    """
    samples, extent = samples.detach().cpu().float(), extent.detach().cpu().float()
    points = torch.cat([samples, extent])
    low, high = points.min(0).values, points.max(0).values
    margin = (high - low).clamp_min(1e-3) * _MARGIN
    low, high = low - margin, high + margin
    width = (high - low) / bins

    def cells(x: Tensor) -> tuple[Tensor, Tensor]:
        index = ((x - low) / width).floor().long()
        return index[:, 0] * bins + index[:, 1], ((index >= 0) & (index < bins)).all(1)

    index, inside = cells(samples)
    counts = torch.bincount(index[inside], minlength=bins * bins).float()
    log_density = (counts / (samples.shape[0] * width.prod())).log()

    def log_density_of(x: Tensor) -> Tensor:
        index, inside = cells(x.detach().cpu().float())
        return torch.where(inside, log_density[index.clamp(0, bins * bins - 1)], -math.inf)

    return log_density_of


def _rgb(images: Tensor) -> Tensor:
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def save_inpainting_picture(original: Tensor, missing: Tensor, sample: Tensor, mpe: Tensor, path: Path,
                            columns: int = 8, software: str = SOFTWARE) -> None:
    """Blocks of four rows per ``columns`` images: original, with the missing part marked, a conditional
    sample, the max-product completion. Images ``[N, C, H, W]`` in ``[0, 1]``; ``missing`` a boolean mask like them."""
    color = torch.tensor(MISSING_COLOR)[None, :, None, None]
    marked = torch.where(_rgb(missing), color, _rgb(original))
    rows = [_rgb(original), marked, _rgb(sample), _rgb(mpe)]
    columns = min(columns, original.shape[0])
    tiles = []
    for start in range(0, original.shape[0], columns):
        for row in rows:
            block = row[start:start + columns]
            tiles.append(torch.cat([block, block.new_ones((columns - block.shape[0],) + block.shape[1:])]))
    _save_png(make_grid(_enlarge(torch.cat(tiles).float()), nrow=columns, padding=2, pad_value=0.5), path,
              software)
