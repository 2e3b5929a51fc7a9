"""Helpers shared by the example scripts (not part of the library).

* :func:`smoke_mode`: whether to run the tiny, fast configuration (``--smoke-test`` or the ``CI`` variable).
* :func:`output_dir`: the output folder, created.
* :func:`make_parser`: an ``argparse`` parser with the options every example takes.
* :func:`batches`: shuffled mini-batches of a tensor.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from pyro_spn import RatSPN
from pyro_spn.data import DATASETS, Dataset, load_dataset
from pyro_spn.train.pictures import colormap

__all__ = ["batches", "make_parser", "mlp", "output_dir", "smoke_mode"]


def smoke_mode(args: argparse.Namespace) -> bool:
    """True if ``args.smoke_test`` is set or the ``CI`` environment variable is set (and not "0"/"false")."""
    ci = os.environ.get("CI", "").strip().lower()
    return bool(getattr(args, "smoke_test", False)) or ci not in ("", "0", "false", "no")


def output_dir(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path``, created with its parents if missing."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def make_parser(name: str, description: str | None = None, epochs: int = 10) -> argparse.ArgumentParser:
    """A parser with ``--dataset`` (default "digits"), ``--data-root``, ``--download``, ``--epochs``,
    ``--batch-size``, ``--lr``, ``--output`` (default ``runs/examples/<name>``), ``--seed`` and ``--smoke-test``."""
    parser = argparse.ArgumentParser(prog=f"{name}.py", description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", choices=DATASETS, help="data set (default: digits)")
    parser.add_argument("--data-root", default=None,
                        help="folder of the torchvision data files (default: data; the bundled digits need none)")
    parser.add_argument("--download", action="store_true", help="download missing torchvision data files")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default: {epochs})")
    parser.add_argument("--batch-size", type=int, default=128, help="examples per mini-batch")
    parser.add_argument("--lr", type=float, default=1e-2, help="the circuit's Adam learning rate")
    parser.add_argument("--output", default=f"runs/examples/{name}", help="folder for pictures and results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true",
                        help="tiny circuit, 1 epoch, few batches (also on when the CI variable is set)")
    return parser


def batches(x: Tensor, batch_size: int, max_batches: int | None = None, shuffle: bool = True) -> Iterator[Tensor]:
    """Mini-batches of ``x`` (shuffled with the global RNG), at most ``max_batches`` of them."""
    order = torch.randperm(x.shape[0]) if shuffle else torch.arange(x.shape[0])
    for number, index in enumerate(order.split(batch_size)):
        if max_batches is not None and number >= max_batches:
            return
        yield x[index]


def add_circuit_options(parser: argparse.ArgumentParser, depth: int, repetitions: int, sums: int,
                        temperature: bool = False) -> None:
    """Adds ``--depth``, ``--num-repetitions``, ``--num-sums`` (sum units and leaf components per region) and, for
    the sample-based objectives, ``--tau`` / ``--tau-min`` (the annealed Gumbel-Softmax temperature)."""
    parser.add_argument("--depth", type=int, default=depth, help="circuit depth D")
    parser.add_argument("--num-repetitions", type=int, default=repetitions, help="repetitions R")
    parser.add_argument("--num-sums", type=int, default=sums, help="sum units per region K")
    if temperature:
        parser.add_argument("--tau", type=float, default=1.0, help="starting Gumbel-Softmax temperature")
        parser.add_argument("--tau-min", type=float, default=0.5, help="final Gumbel-Softmax temperature")


def load_data(options: argparse.Namespace, smoke: bool) -> Dataset:
    """The ``--dataset`` of the options; in smoke mode only 512 examples per split."""
    return load_dataset(options.dataset, root=options.data_root, download=options.download, seed=options.seed,
                        num_samples=512 if smoke else None)


def circuit_sizes(options: argparse.Namespace, smoke: bool) -> tuple[int, int, int]:
    """``(depth, repetitions, sums)`` of the options; tiny in smoke mode."""
    return (2, 2, 4) if smoke else (options.depth, options.num_repetitions, options.num_sums)


def schedule(options: argparse.Namespace, smoke: bool) -> tuple[int, int | None, int]:
    """``(epochs, batches per epoch, batch size)`` of the options; one short epoch in smoke mode."""
    return (1, 3, 32) if smoke else (options.epochs, None, options.batch_size)


def build_circuit(data: Dataset, options: argparse.Namespace, smoke: bool) -> RatSPN:
    """A RAT-SPN over the data set's event shape with the options' sizes (tiny in smoke mode) and the data set's
    leaf family."""
    depth, repetitions, sums = circuit_sizes(options, smoke)
    return RatSPN(data.event_shape, depth=depth, num_repetitions=repetitions, num_sums=sums, num_leaves=sums,
                  leaf=data.leaf, seed=options.seed)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Runs the block on one torch thread (tiny tensors: more threads only add overhead and contend on small
    machines), restoring the thread count afterwards, also on an error."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def density_tile(log_density: Callable[[Tensor], Tensor], samples: Tensor | None, extent: float,
                 size: int = 192) -> Tensor:
    """An RGB heatmap ``[3, size, size]`` of ``exp(log_density)`` on ``[-extent, extent]²`` (y up), samples red."""
    centers = (torch.arange(size) + 0.5) / size * 2 * extent - extent
    ys, xs = torch.meshgrid(centers.flip(0), centers, indexing="ij")
    with torch.no_grad():
        log_p = log_density(torch.stack([xs.flatten(), ys.flatten()], 1)).reshape(size, size)
    picture = colormap((log_p - log_p.max()).exp()).permute(2, 0, 1).contiguous()
    if samples is not None:
        cells = ((samples + extent) / (2 * extent) * size).floor().long()
        cells = cells[((cells >= 0) & (cells < size)).all(1)]
        picture[:, size - 1 - cells[:, 1], cells[:, 0]] = torch.tensor([1.0, 0.25, 0.25])[:, None]
    return picture


def mlp(inputs: int, outputs: int, budget: int) -> torch.nn.Sequential:
    """A two-hidden-layer tanh network ``inputs → H → H → outputs`` whose width ``H`` makes its parameter count the
    closest to ``budget`` (so that networks with different heads compare at equal size)."""
    def count(width: int) -> int:
        return (inputs + 1) * width + (width + 1) * width + (width + 1) * outputs

    width = min(range(1, 2048), key=lambda h: abs(count(h) - budget))
    return torch.nn.Sequential(torch.nn.Linear(inputs, width), torch.nn.Tanh(), torch.nn.Linear(width, width),
                               torch.nn.Tanh(), torch.nn.Linear(width, outputs))


def svi_parser(description: str, output: str) -> argparse.ArgumentParser:
    """The SVI examples' options: steps, learning rate, particles, evaluation particles, output, seed, smoke test."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--steps", type=int, default=1000, help="SVI steps per guide")
    parser.add_argument("--lr", type=float, default=0.01, help="initial Adam learning rate")
    parser.add_argument("--particles", type=int, default=16, help="vectorized ELBO particles per step")
    parser.add_argument("--eval-particles", type=int, default=20000, help="particles of the final ELBO estimates")
    parser.add_argument("--output", default=output, help="folder for pictures and results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (also on when CI is set)")
    return parser
