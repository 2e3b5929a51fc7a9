"""Region graphs compared with RAT-SPN's random binary trees: test NLL on digits and speed at image sizes.

Usage::

    python benchmarks/bench_structures.py speed [--shapes 1x28x28,3x32x32] [--batch 128] [--repeats 5]
        [--threads 2] [--json speed.json]
    python benchmarks/bench_structures.py nll [--epochs 10] [--seeds 0,1,2] [--depth 4] [--sums 20] [--leaves 20]
        [--lr 0.01] [--threads 2] [--json nll.json]

Structures (all at the same depth ``D`` and repetitions ``R``, so with exactly the same parameter count):
``rat`` (random binary trees), ``quad-tree`` (repetition 0 the plain quad-tree, the others shifted), and
``pd-<delta>`` (random trees drawn from the Poon-Domingos region graph with cuts at steps of ``delta``; not the PD
DAG).

``speed`` times ``-log_prob(x).mean()`` forward and backward for a batch of random Binomial(255) images with the
paper's circuit (D = 4, R = 10, K = 20, I = 20), the structures timed in interleaved rounds (one call each per round,
rotating order, after a warm-up), and prints the median and the minimum per structure and their ratios to RAT's measured
in the same run (on a shared machine the minimum is the steadier), with ``M``, the padded size of a leaf region (leaf
regions of uneven sizes are padded to the largest).

``nll`` trains each structure by maximum likelihood on the bundled 8 × 8 digits (``pyro_spn.train.Trainer``, by default
with the command line's defaults: D = 4, R = 10, K = 20, I = 20, Adam at 0.01, batch 128) for ``--epochs`` epochs per
seed and prints the mean and standard deviation over the seeds of the test split's NLL (nats per image).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from pyro_spn import RatSPN
from pyro_spn.leaves import Binomial
from pyro_spn.region_graphs import poon_domingos_trees, quad_tree
from pyro_spn.structure import RandomBinaryTrees, random_binary_trees
from pyro_spn.train import TrainConfig, Trainer

DEPTH, REPETITIONS, SUMS, LEAVES = 4, 10, 20, 20
#: name → (TrainConfig overrides, builder of the structure for an image ``(height, width)``).
STRUCTURES: dict[str, tuple[dict[str, Any], Callable[[int, int], RandomBinaryTrees]]] = {
    "rat": ({"structure": "rat"}, lambda h, w: random_binary_trees(h * w, DEPTH, REPETITIONS)),
    "quad-tree": ({"structure": "quad-tree"}, lambda h, w: quad_tree(h, w, DEPTH, REPETITIONS)),
    "pd-2": ({"structure": "poon-domingos", "pd_delta": 2}, lambda h, w: poon_domingos_trees(h, w, 2, DEPTH,
                                                                                             REPETITIONS)),
    "pd-4": ({"structure": "poon-domingos", "pd_delta": 4}, lambda h, w: poon_domingos_trees(h, w, 4, DEPTH,
                                                                                             REPETITIONS)),
}


def time_step(spn: RatSPN, x: torch.Tensor) -> float:
    """Seconds of one forward and backward of ``-log_prob(x).mean()``."""
    start = time.perf_counter()
    spn.zero_grad()
    (-spn(x).mean()).backward()
    return time.perf_counter() - start


def speed(shapes: list[tuple[int, int, int]], batch: int, repeats: int) -> list[dict[str, Any]]:
    rows = []
    for shape in shapes:
        channels, height, width = shape
        circuits = {name: RatSPN(shape, structure=build(height, width), num_sums=SUMS, num_leaves=LEAVES,
                                 leaf=Binomial(255)) for name, (_, build) in STRUCTURES.items()}
        x = torch.randint(0, 256, (batch, *shape)).float()
        times: dict[str, list[float]] = {name: [] for name in circuits}
        for spn in circuits.values():
            time_step(spn, x)  # warm-up
        names = list(circuits)
        for round_ in range(repeats):
            for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                times[name].append(time_step(circuits[name], x))
        rat_median, rat_min = statistics.median(times["rat"]), min(times["rat"])
        for name, spn in circuits.items():
            median, fastest = statistics.median(times[name]), min(times[name])
            rows.append({"shape": "x".join(map(str, shape)), "structure": name, "median_s": median, "min_s": fastest,
                         "median_ratio_to_rat": median / rat_median, "min_ratio_to_rat": fastest / rat_min,
                         "slots_per_region": spn.leaf_layer.leaf_slots.shape[-1],
                         "parameters": spn.flat_parameter_size})
            print(f"{rows[-1]['shape']:>8} {name:>10}  median {median * 1e3:7.1f} ms (x{median / rat_median:4.2f} vs "
                  f"rat)  min {fastest * 1e3:7.1f} ms (x{fastest / rat_min:4.2f})  "
                  f"M={rows[-1]['slots_per_region']:4d}  params={spn.flat_parameter_size}", flush=True)
    return rows


def nll(epochs: int, seeds: list[int], size: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (overrides, _) in STRUCTURES.items():
            values, seconds = [], []
            for seed in seeds:
                config = TrainConfig(epochs=epochs, seed=seed, device="cpu", num_repetitions=REPETITIONS,
                                     output=str(Path(folder) / f"{name}-{seed}"), num_final_samples=8, **size,
                                     **overrides)
                start = time.perf_counter()
                trainer = Trainer(config, progress=False)
                trainer.fit()
                seconds.append(time.perf_counter() - start)
                values.append(-float(trainer.model.log_likelihood(trainer.data.test).mean()))
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            rows.append({"structure": name, "test_nll": statistics.mean(values), "std": std, "per_seed": values,
                         "seconds_per_run": statistics.mean(seconds),
                         "parameters": trainer.model.num_parameters()})
            per_seed = ", ".join(f"{v:.2f}" for v in values)
            print(f"{name:>10}  test NLL {rows[-1]['test_nll']:7.2f} ± {std:5.2f}  ({per_seed})  "
                  f"{rows[-1]['seconds_per_run']:.0f} s/run  params={rows[-1]['parameters']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("speed", "nll"))
    parser.add_argument("--shapes", default="1x28x28,3x32x32", help="image shapes CxHxW (speed)")
    parser.add_argument("--batch", type=int, default=128, help="batch size (speed)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (speed)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run (nll)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds (nll)")
    parser.add_argument("--depth", type=int, default=DEPTH, help="circuit depth (nll)")
    parser.add_argument("--sums", type=int, default=SUMS, help="sum units per region (nll)")
    parser.add_argument("--leaves", type=int, default=LEAVES, help="leaf components per leaf region (nll)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate (nll)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.what == "speed":
        shapes = [tuple(int(n) for n in shape.split("x")) for shape in args.shapes.split(",")]
        rows = speed([(s[0], s[1], s[2]) for s in shapes], args.batch, args.repeats)
    else:
        size = {"depth": args.depth, "num_sums": args.sums, "num_leaves": args.leaves, "lr": args.lr}
        rows = nll(args.epochs, [int(seed) for seed in args.seeds.split(",")], size)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
