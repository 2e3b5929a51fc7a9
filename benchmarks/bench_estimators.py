"""Bias and variance of every gradient estimator of ``∇ E_p[f]`` (pyro_spn.estimators) against the exact gradient.

Usage::

    python benchmarks/bench_estimators.py [--repeats 200] [--samples 256] [--quick] [--json FILE] [--markdown FILE]

Small circuits (2 Normal variables; 4 Binomial(3), Bernoulli or Categorical(3) variables) with spread-out parameters
and three functions ``f``: ``‖x‖²``, a nonlinear one (``sin(Σx) + x_0 x_last − 0.3 x_1²``) and an RBF kernel to three
fixed points (which the exact estimator takes). The exact gradient w.r.t. the sum weights (every einsum layer's and
the root's logits) is computed by enumerating every state (discrete leaves) or by Simpson's rule on a fine grid
(Normal leaves), in float64. Every estimator is then run ``--repeats`` times with ``--samples`` samples each:

* relative bias ``‖mean ĝ − g‖ / ‖g‖``, with its noise floor ``sqrt(tr Cov(ĝ) / repeats) / ‖g‖`` (a bias below
  about twice the floor is not distinguishable from zero);
* the largest per-coordinate ``|mean ĝ − g| / standard error`` (``z``; an unbiased estimator stays below about 4);
* relative standard deviation of one estimate, ``sqrt(tr Cov(ĝ)) / ‖g‖``;
* milliseconds per estimate (value + backward).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import torch

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.estimators import RBFKernel, expectation
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Leaf, Normal

DTYPE = torch.float64
#: (label, estimator, temperature, baseline)
ESTIMATORS = (("soft τ=0.5", "soft", 0.5, "leave_one_out"), ("soft τ=0.1", "soft", 0.1, "leave_one_out"),
              ("straight-through τ=0.5", "straight_through", 0.5, "leave_one_out"),
              ("straight-through τ=0.1", "straight_through", 0.1, "leave_one_out"),
              ("score, no baseline", "score", 1.0, "none"), ("score, leave-one-out", "score", 1.0, "leave_one_out"),
              ("exact", "exact", 1.0, "leave_one_out"))
CIRCUITS: dict[str, tuple[Leaf, int, tuple[float, ...] | None]] = {
    "normal, F=2": (Normal(), 2, None), "binomial(3), F=4": (Binomial(total_count=3), 4, (0.0, 1.0, 2.0, 3.0)),
    "bernoulli, F=4": (Bernoulli(), 4, (0.0, 1.0)), "categorical(3), F=4": (Categorical(3), 4, (0.0, 1.0, 2.0))}


@dataclass
class Row:
    circuit: str
    function: str
    estimator: str
    relative_bias: float
    noise_floor: float
    max_z: float
    relative_std: float
    ms_per_estimate: float


def make_circuit(leaf: Leaf, num_features: int, seed: int = 0) -> RatSPN:
    spn = RatSPN(num_features, depth=1, num_repetitions=2, num_sums=3, num_leaves=3, leaf=leaf, seed=seed).to(DTYPE)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in spn.named_parameters():
            p.add_((0.3 if name.endswith("raw_scale") else 1.0) * torch.randn(p.shape, generator=generator,
                                                                           dtype=DTYPE))
    return spn


def sum_weights(spn: RatSPN) -> list[torch.Parameter]:
    return [p for name, p in spn.named_parameters() if not name.startswith("leaf_layer")]


def functions(num_features: int, top: float) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    points = torch.linspace(0.0, top, 3 * num_features, dtype=DTYPE).view(3, num_features).flip(1)
    return {"‖x‖²": lambda x: x.square().sum(-1),
            "nonlinear": lambda x: torch.sin(x.sum(-1)) + x[:, 0] * x[:, -1] - 0.3 * x[:, 1] ** 2,
            "RBF kernel": RBFKernel(points, bandwidth=max(top, 1.0) / 2)}


def exact_value(spn: RatSPN, values: tuple[float, ...] | None, f: Callable[[torch.Tensor], torch.Tensor]
                ) -> torch.Tensor:
    if values is not None:
        states = torch.tensor(list(product(values, repeat=spn.num_features)), dtype=DTYPE)
        return (spn(states).exp() * f(states)).sum()
    grid = torch.linspace(-12.0, 12.0, 601, dtype=DTYPE)  # Simpson's rule on [-12, 12]²
    weights = torch.ones(len(grid), dtype=DTYPE)
    weights[1:-1:2], weights[2:-1:2] = 4.0, 2.0
    weights *= (grid[1] - grid[0]) / 3
    x = torch.cartesian_prod(grid, grid)
    return ((weights[:, None] * weights[None, :]).flatten() * spn(x).exp() * f(x)).sum()


def gradient(params: list[torch.Parameter], value: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.flatten() for g in torch.autograd.grad(value, params)])


def measure(spn: RatSPN, values: tuple[float, ...] | None, name: str, f: Callable[[torch.Tensor], torch.Tensor],
            circuit: str, repeats: int, samples: int) -> list[Row]:
    params = sum_weights(spn)
    exact = gradient(params, exact_value(spn, values, f))
    norm = float(exact.norm())
    rows = []
    for label, estimator, temperature, baseline in ESTIMATORS:
        if estimator == "exact" and not isinstance(f, RBFKernel):
            continue
        d = SPNDistribution(spn, temperature=temperature)
        started = time.perf_counter()
        estimates = torch.stack([gradient(params, expectation(d, f, samples, estimator, baseline=baseline))
                                 for _ in range(repeats)])
        elapsed = (time.perf_counter() - started) / repeats
        mean = estimates.mean(0)
        spread = float(estimates.var(0).sum().sqrt()) if repeats > 1 else 0.0
        error = estimates.std(0) / math.sqrt(repeats) + 1e-15
        rows.append(Row(circuit, name, label, float((mean - exact).norm()) / norm, spread / math.sqrt(repeats) / norm,
                        float(((mean - exact).abs() / error).max()), spread / norm, 1e3 * elapsed))
        print(f"  {circuit:<20} {name:<11} {label:<24} bias {rows[-1].relative_bias:8.4f} "
              f"(floor {rows[-1].noise_floor:.4f})  std {rows[-1].relative_std:8.3f}  "
              f"{rows[-1].ms_per_estimate:6.1f} ms", file=sys.stderr, flush=True)
    return rows


def markdown(rows: list[Row], repeats: int, samples: int) -> str:
    lines = [f"Gradient w.r.t. the sum weights, {samples} samples per estimate, {repeats} estimates per row.", "",
             "| circuit | f | estimator | relative bias | noise floor | max z | relative std | ms |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.circuit} | {r.function} | {r.estimator} | {r.relative_bias:.4f} | {r.noise_floor:.4f} | "
                     f"{r.max_z:.1f} | {r.relative_std:.3f} | {r.ms_per_estimate:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="20 repeats of 64 samples, two circuits")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    repeats, samples = (20, 64) if args.quick else (args.repeats, args.samples)
    circuits = dict(list(CIRCUITS.items())[:2]) if args.quick else CIRCUITS
    torch.manual_seed(0)
    rows: list[Row] = []
    for circuit, (leaf, num_features, values) in circuits.items():
        spn = make_circuit(leaf, num_features)
        top = 2.0 if values is None else values[-1]
        for name, f in functions(num_features, top).items():
            rows.extend(measure(spn, values, name, f, circuit, repeats, samples))
    table = markdown(rows, repeats, samples)
    print(table)
    for path, text in ((args.markdown, table), (args.json, json.dumps([asdict(r) for r in rows], indent=1))):
        if path is not None:
            path.write_text(text)


if __name__ == "__main__":
    main()
