"""The paper's Table 5: LL, ADV and MMD training on the six synthetic 2-D data sets.

For each set of ``pyro_spn.data.SYNTHETIC_DATASETS`` the circuit is, as in the paper, a mixture of ``K``
products of two univariate Gaussians (``RatSPN(2, depth=1, num_repetitions=K, num_sums=1, num_leaves=1,
leaf=Normal())``: one product per repetition, the repetitions mixed at the root), with the paper's ``K``
per set (2-clusters 2, varied 3, aniso 30, 9-clusters 9, 2-moons 50, 2-circles 30). It is trained three
times, from the same k-means initialization (means and stds of the clusters):

* ``LL``: maximum likelihood (``make_objective("ll")``);
* ``ADV``: non-saturating GAN with an MLP discriminator (``make_objective("adv")``);
* ``MMD``: MMD² with fixed RBF kernels (``make_objective("mmd")``);

ADV and MMD train through the circuit's soft differentiable samples (``SPNDistribution(hard=False)``,
constant ``τ = 0.1``: soft samples interpolate between components, and larger ``τ`` pulls them between modes).
Training runs on standardized data; log-likelihoods are reported in raw coordinates.

Printed and saved to ``results.json``: the mean held-out (test) log-likelihood per set and objective (and
the true density's, for the four Gaussian mixtures). Picture ``densities.png``: a row per data set (in the
order above), columns left to right: data (white dots; over the true density where known), then the
density of the LL, ADV and MMD circuits with 300 of their samples as red dots.

Run::

    python examples/synthetic_2d.py                    # full run (a few minutes on 2 cores)
    python examples/synthetic_2d.py --smoke-test       # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.data import SYNTHETIC_DATASETS, load_dataset
from pyro_spn.leaves import Normal
from pyro_spn.objectives import make_objective
from pyro_spn.train.pictures import colormap

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import output_dir, single_thread, smoke_mode  # noqa: E402

COMPONENTS = {"2-clusters": 2, "varied": 3, "aniso": 30, "9-clusters": 9, "2-moons": 50, "2-circles": 30}
OBJECTIVES = ("ll", "adv", "mmd")
BANDWIDTHS = (0.05, 0.1, 0.2, 0.5, 1.0)  # MMD kernels on standardized data


def kmeans(points: Tensor, k: int, generator: torch.Generator, restarts: int = 10, iterations: int = 20
           ) -> Tensor:
    """Cluster centers ``[k, 2]``: the best of ``restarts`` runs of k-means++ seeding and Lloyd iterations."""
    best, best_cost = points[:k], float("inf")
    for _ in range(restarts):
        chosen = [int(torch.randint(points.shape[0], (1,), generator=generator))]
        for _ in range(k - 1):
            distance = torch.cdist(points, points[chosen]).min(1).values.square()
            chosen.append(int(torch.multinomial(distance / distance.sum(), 1, generator=generator)))
        centers = points[chosen]
        for _ in range(iterations):
            assignment = torch.cdist(points, centers).argmin(1)
            centers = torch.stack([points[assignment == j].mean(0) if (assignment == j).any() else centers[j]
                                   for j in range(k)])
        cost = float(torch.cdist(points, centers).min(1).values.square().sum())
        if cost < best_cost:
            best, best_cost = centers, cost
    return best


def build_spn(k: int, train: Tensor, seed: int, restarts: int = 10) -> RatSPN:
    """A mixture of ``k`` products of two Gaussians initialized by k-means (:func:`kmeans`): means on the
    cluster centers, scales the clusters' stds (gradient training from random points can leave components
    merged in one mode)."""
    spn = RatSPN(2, depth=1, num_repetitions=k, num_sums=1, num_leaves=1, leaf=Normal(), seed=seed)
    centers = kmeans(train, k, torch.Generator().manual_seed(seed), restarts=restarts)
    assignment = torch.cdist(train, centers).argmin(1)
    scales = torch.stack([train[assignment == j].std(0) if (assignment == j).sum() > 1 else torch.full((2,), 0.3)
                          for j in range(k)]).clamp(0.05, 1.0)
    with torch.no_grad():
        spn.leaf_layer.loc.copy_(centers.T.reshape(1, 2, 1, k))
        spn.leaf_layer.raw_scale.copy_(torch.expm1(scales - spn.leaf.min_scale).log().T.reshape(1, 2, 1, k))
    return spn


def train_one(name: str, spn: RatSPN, train: Tensor, steps: int, batch_size: int, lr: float, tau: float,
              discriminator_lr: float) -> float:
    """Trains ``spn`` with objective ``name``; returns the mean loss of the last 10 % of the steps."""
    options = {"adv": {"lr": discriminator_lr}, "mmd": {"bandwidths": BANDWIDTHS}}.get(name, {})
    objective = make_objective(name, event_shape=(2,), **options)
    optimizer = torch.optim.Adam(spn.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        batch = train[torch.randint(train.shape[0], (batch_size,))]
        d = SPNDistribution(spn, temperature=tau, hard=False) if name != "ll" else SPNDistribution(spn)
        objective.auxiliary_step(d, batch)
        loss = objective.loss(d, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    tail = losses[-max(1, steps // 10):]
    return sum(tail) / len(tail)


def tile(log_density, low: Tensor, high: Tensor, points: list[tuple[Tensor, tuple[float, ...]]],
         size: int) -> Tensor:
    """An RGB heatmap ``[3, size, size]`` of ``exp(log_density)`` on the box ``[low, high]`` (y up; black
    without a density), with colored dots."""
    xs_, ys_ = [low[i] + (torch.arange(size) + 0.5) / size * (high[i] - low[i]) for i in range(2)]
    ys, xs = torch.meshgrid(ys_.flip(0), xs_, indexing="ij")
    if log_density is None:
        picture = torch.zeros(3, size, size)
    else:
        with torch.no_grad():
            log_p = log_density(torch.stack([xs.flatten(), ys.flatten()], 1)).float().reshape(size, size)
        picture = colormap((log_p - log_p.max()).exp()).permute(2, 0, 1).contiguous()
    for cloud, color in points:
        cells = ((cloud - low) / (high - low) * size).floor().long()
        cells = cells[((cells >= 0) & (cells < size)).all(1)]
        for dy in (0, 1):
            for dx in (0, 1):
                row, column = (size - 1 - cells[:, 1] + dy).clamp(0, size - 1), (cells[:, 0] + dx).clamp(0, size - 1)
                picture[:, row, column] = torch.tensor(color)[:, None]
    return picture


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(SYNTHETIC_DATASETS), choices=SYNTHETIC_DATASETS)
    parser.add_argument("--steps", type=int, default=1000, help="training steps per set and objective")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01, help="the circuit's Adam learning rate")
    parser.add_argument("--discriminator-lr", type=float, default=1e-3, help="ADV discriminator learning rate")
    parser.add_argument("--tau", type=float, default=0.1,
                        help="Gumbel-Softmax temperature (ADV, MMD); larger τ pulls soft samples between modes")
    parser.add_argument("--num-samples", type=int, default=3000, help="points per set over all splits")
    parser.add_argument("--output", default="runs/examples/synthetic_2d", help="folder for pictures and results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (also on when CI is set)")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    steps = 10 if smoke else options.steps
    batch_size = 64 if smoke else options.batch_size
    num_samples = 300 if smoke else options.num_samples
    size = 64 if smoke else 160
    out = output_dir(options.output)
    torch.manual_seed(options.seed)
    with single_thread():
        start = time.perf_counter()

        results: dict[str, dict[str, float]] = {}
        rows: list[Tensor] = []
        for name in options.datasets:
            data = load_dataset(name, seed=options.seed, num_samples=num_samples)
            mean, std = data.train.mean(0), data.train.std(0)
            train, test = (data.train - mean) / std, (data.test - mean) / std
            log_jacobian = float(std.log().sum())  # log p_raw(x) = log p_std((x - mean) / std) − Σ log std
            low, high = data.train.min(0).values, data.train.max(0).values
            low, high = low - 0.15 * (high - low), high + 0.15 * (high - low)
            subset = data.train[:500]
            truth = data.true_log_density
            row = [tile(truth, low, high, [(subset, (1.0, 1.0, 1.0))], size)]
            results[name] = {"K": COMPONENTS[name]}
            if truth is not None:
                results[name]["true"] = float(truth(data.test).mean())
            for objective in OBJECTIVES:
                spn = build_spn(COMPONENTS[name], train, options.seed, restarts=2 if smoke else 10)
                final_loss = train_one(objective, spn, train, steps, batch_size, options.lr, options.tau,
                                       options.discriminator_lr)
                d = SPNDistribution(spn)
                with torch.no_grad():
                    results[name][objective] = float(d.log_prob(test).mean()) - log_jacobian
                    samples = d.sample((300,)) * std + mean
                results[name][f"{objective}_final_loss"] = final_loss

                def log_density(points: Tensor, d: SPNDistribution = d, mean: Tensor = mean,
                                std: Tensor = std) -> Tensor:
                    return d.log_prob((points - mean) / std)

                row.append(tile(log_density, low, high, [(samples, (1.0, 0.25, 0.25))], size))
            rows.append(torch.stack(row))
            cells = "  ".join(f"{o.upper()} {results[name][o]:8.3f}" for o in OBJECTIVES)
            true = f"  (true {results[name]['true']:.3f})" if "true" in results[name] else ""
            print(f"{name:>10} K={COMPONENTS[name]:<3} test LL: {cells}{true}", flush=True)

    picture = out / "densities.png"
    save_image(make_grid(torch.cat(rows), nrow=1 + len(OBJECTIVES), padding=3, pad_value=1.0), picture)
    seconds = time.perf_counter() - start
    summary = {"test_log_likelihood": results, "steps": steps, "tau": options.tau, "smoke_test": smoke,
               "seconds": seconds}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"({steps} steps per cell, {seconds:.1f} s) wrote {picture} (rows: {', '.join(options.datasets)}; "
          f"columns: data, LL, ADV, MMD) and {out / 'results.json'}")


if __name__ == "__main__":
    main()
