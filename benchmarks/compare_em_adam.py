"""EM against Adam for maximum likelihood on the bundled digits: test NLL per epoch and against wall time.

Trains the same RAT-SPN (leaves of ``--leaf``, default Binomial(16), on 8 × 8 digits preprocessed for them as
``pyrospn-train --leaf`` does; the circuit ``pyro_spn.train.model`` builds) from the same initialization with each
method, over the same shuffled mini-batches:

- ``em``: mini-batch (stochastic) EM, :class:`pyro_spn.em.EM` with its default step sizes ``(t + 2)^-0.6``;
- ``adam-<lr>``: Adam on ``-mean log p(x)`` (the ``ll`` objective of the trainer), one run per ``--adam-lr``.

The test NLL (nats per example) is measured before training and after every epoch; ``seconds`` counts training
time only (no evaluation). Writes ``<output>/em_vs_adam.json`` and ``<output>/em_vs_adam.png`` (``em_vs_adam_<leaf>``
for leaves other than binomial) and prints a table.

    OMP_WAIT_POLICY=passive python benchmarks/compare_em_adam.py --epochs 15 --output benchmarks/results/em
    OMP_WAIT_POLICY=passive python benchmarks/compare_em_adam.py --leaf poisson --epochs 10 --output benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyro_spn import RatSPN
from pyro_spn.data import LEAVES, Dataset, load_dataset
from pyro_spn.em import EM


def build(data: Dataset, args: argparse.Namespace) -> RatSPN:
    """The circuit of the trainer for these options (same seed: the same initialization for every method)."""
    return RatSPN(data.event_shape, depth=args.depth, num_repetitions=args.repetitions, num_sums=args.sums,
                  num_leaves=args.leaves, leaf=data.leaf, seed=args.seed)


@torch.no_grad()
def nll(spn: RatSPN, x: Tensor, batch_size: int = 1024) -> float:
    """Mean negative log-likelihood of ``x [N, *event_shape]`` in nats per example."""
    return -float(sum(float(spn(part).sum()) for part in x.split(batch_size))) / x.shape[0]


def adam_step(spn: RatSPN, lr: float) -> Callable[[Tensor], None]:
    optimizer = torch.optim.Adam(spn.parameters(), lr=lr)

    def step(x: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        (-spn(x).mean()).backward()
        optimizer.step()

    return step


def em_step(spn: RatSPN) -> Callable[[Tensor], None]:
    em = EM(spn)

    def step(x: Tensor) -> None:
        em.step(x)

    return step


def run(name: str, data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    """Trains one method; returns ``{"method", "epoch", "seconds", "test_nll", "train_nll"}`` (lists from epoch 0)."""
    spn = build(data, args)
    step = em_step(spn) if name == "em" else adam_step(spn, float(name.split("-", 1)[1]))
    record: dict[str, Any] = {"method": name, "epoch": [0], "seconds": [0.0], "test_nll": [nll(spn, data.test)],
                              "train_nll": [nll(spn, data.train)]}
    order = torch.Generator().manual_seed(args.seed)
    elapsed = 0.0
    for epoch in range(1, args.epochs + 1):
        permutation = torch.randperm(data.train.shape[0], generator=order)
        start = time.perf_counter()
        for index in permutation.split(args.batch_size):
            step(data.train[index])
        elapsed += time.perf_counter() - start
        record["epoch"].append(epoch)
        record["seconds"].append(elapsed)
        record["test_nll"].append(nll(spn, data.test))
        record["train_nll"].append(nll(spn, data.train))
        print(f"{name:>10} epoch {epoch:3d}  {elapsed:7.2f} s  test NLL {record['test_nll'][-1]:.3f}", flush=True)
    return record


def plot(records: list[dict[str, Any]], path: Path, leaf: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_epoch, by_time) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for record in records:
        by_epoch.plot(record["epoch"][1:], record["test_nll"][1:], marker="o", markersize=3, label=record["method"])
        by_time.plot(record["seconds"][1:], record["test_nll"][1:], marker="o", markersize=3, label=record["method"])
    by_epoch.set_xlabel("epoch")
    by_time.set_xlabel("training time (s)")
    by_epoch.set_ylabel("test NLL (nats per digit)")
    by_epoch.legend()
    for axes in (by_epoch, by_time):
        axes.set_yscale("log")
        axes.grid(alpha=0.3, which="both")
    figure.suptitle(f"Digits, RAT-SPN with {leaf} leaves: mini-batch EM vs Adam")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def table(records: list[dict[str, Any]]) -> str:
    """A markdown table: test NLL per epoch (rows) and method (columns), then the seconds per epoch."""
    header = "| epoch | " + " | ".join(r["method"] for r in records) + " |"
    lines = [header, "|" + "---|" * (len(records) + 1)]
    for i, epoch in enumerate(records[0]["epoch"]):
        lines.append(f"| {epoch} | " + " | ".join(f"{r['test_nll'][i]:.2f}" for r in records) + " |")
    lines.append("| seconds | " + " | ".join(f"{r['seconds'][-1]:.1f}" for r in records) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--leaf", choices=LEAVES, default="binomial")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--sums", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--adam-lr", type=float, nargs="+", default=[0.1, 0.01])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/em"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset("digits", leaf=args.leaf, seed=args.seed)
    records = [run(name, data, args) for name in ["em", *(f"adam-{lr:g}" for lr in args.adam_lr)]]
    args.output.mkdir(parents=True, exist_ok=True)
    settings = {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}
    stem = "em_vs_adam" if args.leaf == "binomial" else f"em_vs_adam_{args.leaf}"
    (args.output / f"{stem}.json").write_text(json.dumps({"settings": settings, "runs": records}, indent=1) + "\n")
    plot(records, args.output / f"{stem}.png", args.leaf)
    print(table(records))


if __name__ == "__main__":
    main()
