"""Draws the FID / NLL plane of an experiment's image data set (``docs/images/results_frontier.png``).

Usage::

    python docs/make_frontier.py RESULTS_CSV [OUT_PNG] [--dataset=digits]

Every method of ``results.csv`` (``pyrospn-experiment``'s raw rows) is one point at its mean test NLL and mean test FID
over the seeds, with one-standard-deviation bars; the methods on the lower-left frontier (no other method has both a
lower NLL and a lower FID) are joined by a line, and the likelihood circuit's NLL + 2 % is drawn as a dashed line.
"""

from __future__ import annotations

import csv
import statistics
import sys
from pathlib import Path

#: The NLL tolerance against the likelihood circuit (the issue's target: no worse than LL's + 2 %).
TOLERANCE = 0.02


def method_points(rows: list[dict[str, str]], dataset: str) -> dict[str, tuple[float, float, float, float]]:
    """``{method: (mean NLL, std NLL, mean FID, std FID)}`` over the test rows of ``dataset`` that have both."""
    values: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if row["dataset"] == dataset and row["split"] == "test" and row["nll"] and row["fid"] and not row["error"]:
            values.setdefault(row["method"], []).append((float(row["nll"]), float(row["fid"])))
    points = {}
    for method, pairs in values.items():
        nll, fid = [p[0] for p in pairs], [p[1] for p in pairs]
        spread = (statistics.stdev(nll), statistics.stdev(fid)) if len(pairs) > 1 else (0.0, 0.0)
        points[method] = (statistics.mean(nll), spread[0], statistics.mean(fid), spread[1])
    return points


def frontier(points: dict[str, tuple[float, float, float, float]]) -> list[str]:
    """The methods no other method beats on both mean NLL and mean FID, by increasing NLL."""
    def dominated(method: str) -> bool:
        nll, _, fid, _ = points[method]
        return any(o[0] <= nll and o[2] <= fid and (o[0], o[2]) != (nll, fid) for o in points.values())
    return sorted((m for m in points if not dominated(m)), key=lambda m: points[m][0])


def draw(results: Path, out: Path, dataset: str = "digits") -> None:
    """Writes the picture of ``results`` (an experiment's ``results.csv``) to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with results.open(newline="") as file:
        points = method_points(list(csv.DictReader(file)), dataset)
    if not points:
        raise ValueError(f"{results}: no test rows of {dataset!r} with both an NLL and a FID")
    figure, axes = plt.subplots(figsize=(7.5, 5.0))
    for method, (nll, nll_std, fid, fid_std) in sorted(points.items()):
        axes.errorbar(nll, fid, xerr=nll_std, yerr=fid_std, fmt="o", capsize=3, label=method)
    best = frontier(points)
    axes.plot([points[m][0] for m in best], [points[m][2] for m in best], "k-", lw=0.8, alpha=0.6,
              label="frontier")
    if "ll" in points:
        axes.axvline(points["ll"][0] * (1 + TOLERANCE), color="grey", ls="--", lw=0.8, label="LL's NLL + 2 %")
        axes.axhline(points["ll"][2], color="grey", ls=":", lw=0.8, label="LL's FID")
    axes.set_xlabel(f"test NLL (nats per {dataset} example)")
    axes.set_ylabel("test FID")
    axes.set_yscale("log")
    axes.legend(fontsize=7, ncol=2)
    axes.set_title(f"{dataset}: mean ± std over seeds (lower left is better)")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    arguments = [a for a in sys.argv[1:] if not a.startswith("--dataset")]
    name = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--dataset=")), "digits")
    if not arguments:
        sys.exit(__doc__)
    target = Path(arguments[1]) if len(arguments) > 1 else Path(__file__).parent / "images" / "results_frontier.png"
    draw(Path(arguments[0]), target, name)
