"""Amortized circuits: what a batch of ``B`` parameter sets costs, against one shared parameter set and against a
Python loop over ``B`` circuits.

For each batch size ``B`` and operation, three timings of the same circuit structure on ``B`` rows:

* ``shared``: ``SPNDistribution(spn)``, one parameter set for all rows (the fast paths and the native kernel);
* ``amortized``: ``SPNDistribution(spn, flat_parameters=θ [B, P])``, one set per row (:mod:`pyro_spn.amortized`);
* ``loop``: the same ``B`` parameter sets evaluated one by one (a distribution per set, ``batch_shape == ()``), what
  a user writes without batched parameter sets.

Operations: ``log_prob`` forward and backward (gradients into ``θ``), and straight-through ``rsample`` forward and
backward. Printed: median seconds and the ratios ``amortized / shared`` and ``loop / amortized``.

Run::

    python benchmarks/bench_amortized.py                   # the default sizes
    python benchmarks/bench_amortized.py --quick           # a small circuit, small batches
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Normal


def median_seconds(run: Callable[[], None], repeats: int) -> float:
    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def operations(spn: RatSPN, theta: torch.Tensor, x: torch.Tensor) -> dict[str, dict[str, Callable[[], None]]]:
    """``op → {"shared", "amortized", "loop"} → run``."""
    batch = theta.shape[0]

    def one_by_one(draw: bool) -> None:
        total = theta.new_zeros(())
        for b in range(batch):
            own = SPNDistribution(spn, flat_parameters=theta[b])
            total = total + (own.rsample().square().sum() if draw else own.log_prob(x[b]))
        total.backward()

    return {
        "log_prob": {
            "shared": lambda: SPNDistribution(spn).log_prob(x).sum().backward(),
            "amortized": lambda: SPNDistribution(spn, flat_parameters=theta).log_prob(x).sum().backward(),
            "loop": lambda: one_by_one(False),
        },
        "rsample_st": {
            "shared": lambda: SPNDistribution(spn).rsample((batch,)).square().sum().backward(),
            "amortized": lambda: SPNDistribution(spn, flat_parameters=theta).rsample().square().sum().backward(),
            "loop": lambda: one_by_one(True),
        },
    }


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=64, help="variables F (Normal leaves)")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--sums", type=int, default=10, help="sum units and leaf components per region")
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--loop-max", type=int, default=64, help="largest batch also timed as a Python loop")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="F=16, D=2, R=3, K=4, batches 8 and 32, 2 repeats")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    options = parser.parse_args(args)
    if options.quick:
        options.features, options.depth, options.repetitions, options.sums = 16, 2, 3, 4
        options.batches, options.repeats = [8, 32], 2
    torch.manual_seed(0)
    spn = RatSPN(options.features, depth=options.depth, num_repetitions=options.repetitions, num_sums=options.sums,
                 num_leaves=options.sums, leaf=Normal())
    print(f"circuit: F={options.features} D={options.depth} R={options.repetitions} K=I={options.sums}, "
          f"P={spn.flat_parameter_size} parameters; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'op':12s} {'B':>5s} {'shared s':>10s} {'amortized s':>12s} {'loop s':>10s} {'amort/shared':>13s} "
          f"{'loop/amort':>11s}")
    rows = []
    for batch in options.batches:
        theta = (spn.flatten_parameters().detach() + 0.1 * torch.randn(batch, spn.flat_parameter_size))
        theta.requires_grad_()
        x = torch.randn(batch, options.features)
        for op, runs in operations(spn, theta, x).items():
            seconds = {kind: median_seconds(run, options.repeats) for kind, run in runs.items()
                       if kind != "loop" or batch <= options.loop_max}
            loop = seconds.get("loop")
            rows.append({"op": op, "batch": batch, **seconds})
            print(f"{op:12s} {batch:5d} {seconds['shared']:10.4f} {seconds['amortized']:12.4f} "
                  f"{loop if loop is not None else float('nan'):10.4f} "
                  f"{seconds['amortized'] / seconds['shared']:13.1f} "
                  f"{(loop / seconds['amortized']) if loop is not None else float('nan'):11.1f}")
    if options.json:
        with open(options.json, "w") as handle:
            json.dump({"config": vars(options), "parameters": spn.flat_parameter_size, "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    main()
