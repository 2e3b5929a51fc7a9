"""Draws the figures of the documentation: ``python docs/make_figures.py`` writes ``docs/images/top_down.png``.

Needs matplotlib (``pip install -e ".[bench]"``). The figure shows one sum unit of the soft top-down pass:
its Gumbel-Softmax selection ``y = softmax((log w + g) / τ)`` (computed by :func:`pyro_spn.sampling.select`
with the same Gumbel noise ``g`` for every ``τ``), the samples ``x_k`` of its three children and the
interpolated sample ``Σ_k y_k x_k``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from pyro_spn.sampling import select  # noqa: E402

TEMPERATURES = (0.1, 0.5, 2.0)


def child_samples(size: int = 12) -> torch.Tensor:
    """Three ``size × size`` child samples: a ring, a cross and a bar, ``[3, size, size]`` in ``[0, 1]``."""
    grid = torch.linspace(-1, 1, size)
    yy, xx = torch.meshgrid(grid, grid, indexing="ij")
    radius = (xx**2 + yy**2).sqrt()
    ring = ((radius > 0.45) & (radius < 0.8)).float()
    cross = ((xx.abs() < 0.2) | (yy.abs() < 0.2)).float()
    bar = ((yy - xx).abs() < 0.3).float()
    return torch.stack([ring, cross, bar])


def selections(weights: torch.Tensor, seed: int = 3) -> list[torch.Tensor]:
    """The soft selection of one sum unit at every temperature, from one draw of Gumbel noise."""
    out = []
    for tau in TEMPERATURES:
        torch.manual_seed(seed)  # the same noise g for every τ
        out.append(select(weights.log(), "soft", tau))
    return out


def draw(path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = torch.tensor([0.5, 0.3, 0.2])
    children = child_samples()
    picks = selections(weights)
    fig, axes = plt.subplots(3, len(TEMPERATURES) + 1, figsize=(10, 7),
                             gridspec_kw={"height_ratios": [1.0, 1.0, 1.2]})
    colors = ["tab:blue", "tab:orange", "tab:green"]
    # column 0: the sum unit's weights and its children's samples
    axes[0, 0].bar(range(3), weights.tolist(), color=colors)
    axes[0, 0].set_title("sum unit: weights w")
    axes[0, 0].set_ylim(0, 1)
    axes[0, 0].set_xticks(range(3), ["k=1", "k=2", "k=3"])
    strip = torch.cat([torch.cat([c, torch.zeros(c.shape[0], 2)], dim=1) for c in children], dim=1)[:, :-2]
    axes[1, 0].imshow(strip.numpy(), cmap="gray_r", vmin=0, vmax=1)
    axes[1, 0].set_title("child samples x₁, x₂, x₃")
    axes[2, 0].axis("off")
    axes[2, 0].text(0.0, 0.5, "top-down, per sum unit:\n\n"
                    "y = softmax((log w + g) / τ)\n\n"
                    "x* = Σₖ yₖ xₖ\n\n"
                    "(repeated at every region\nfrom the root to the leaves)",
                    fontsize=11, va="center")
    axes[1, 0].axis("off")
    for column, (tau, y) in enumerate(zip(TEMPERATURES, picks, strict=True), start=1):
        axes[0, column].bar(range(3), y.tolist(), color=colors)
        axes[0, column].set_ylim(0, 1)
        axes[0, column].set_xticks(range(3), ["k=1", "k=2", "k=3"])
        axes[0, column].set_title(f"selection y, τ = {tau:g}")
        axes[1, column].axis("off")
        axes[1, column].text(0.5, 0.5, "\n".join(f"y{k + 1} = {float(v):.2f}" for k, v in enumerate(y)),
                             ha="center", va="center", fontsize=11)
        blend = (y[:, None, None] * children).sum(0)
        axes[2, column].imshow(blend.numpy(), cmap="gray_r", vmin=0, vmax=1)
        axes[2, column].set_title("x* = Σₖ yₖ xₖ")
        axes[2, column].axis("off")
    fig.suptitle("The soft top-down pass at one sum unit: Gumbel-Softmax selection and child interpolation")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    draw(HERE / "images" / "top_down.png")
    print(f"wrote {HERE / 'images' / 'top_down.png'}")


if __name__ == "__main__":
    main()
