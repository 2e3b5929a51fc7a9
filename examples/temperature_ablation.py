"""The paper's Table 4: the Gumbel-Softmax temperature schedule of differentiable sampling, ablated.

One circuit (Binomial leaves, ``total_count=16``) on scikit-learn's 8 × 8 digits, trained with a sample-based
objective (``--objective mmd``, the default; or ``adv`` or ``pae``) through its soft samples
(``SPNDistribution(hard=False)``), once per temperature schedule (:func:`pyro_spn.temperature.make_temperature`),
all from the same initialization and data order:

1. ``const-0.05``: constant ``τ = 0.05``
2. ``const-0.5``: constant ``τ = 0.5``
3. ``const-1.0``: constant ``τ = 1.0``
4. ``annealed``: from ``τ = 1.0`` down to ``0.5`` over the epochs (the paper's schedule)
5. ``learned``: ``τ`` trained jointly with the circuit, initialized at ``1.0``

Printed and saved to ``results.json``: per schedule the final ``τ``, the mean training loss of the last epoch
and the validation negative log-likelihood (nats per image). Picture ``samples.png``: one 4 × 4 grid of exact
samples per schedule, side by side, left to right in the order above (also in ``results.json["order"]``).

Run::

    python examples/temperature_ablation.py                      # full run (minutes on 2 cores)
    python examples/temperature_ablation.py --objective adv      # another objective
    python examples/temperature_ablation.py --smoke-test         # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.data import Dataset, load_dataset
from pyro_spn.joint import JointSPN, MarginalSPNDistribution
from pyro_spn.leaves import Normal
from pyro_spn.objectives import make_objective
from pyro_spn.temperature import make_temperature

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import output_dir, single_thread, smoke_mode  # noqa: E402

# name → make_temperature arguments, in the order of the picture's grids (left to right)
SCHEDULES: dict[str, dict] = {
    "const-0.05": {"kind": "constant", "value": 0.05},
    "const-0.5": {"kind": "constant", "value": 0.5},
    "const-1.0": {"kind": "constant", "value": 1.0},
    "annealed": {"kind": "annealed", "value": 1.0, "minimum": 0.5},
    "learned": {"kind": "learned", "value": 1.0},
}


def build(objective: str, data: Dataset, size: tuple[int, int, int, int], latent_dim: int,
          seed: int) -> RatSPN | JointSPN:
    """The circuit ``objective`` trains: over the data, or for ``pae`` over the data and ``latent_dim`` latents."""
    depth, repetitions, sums, leaves = size
    structure = dict(depth=depth, num_repetitions=repetitions, num_sums=sums, num_leaves=leaves, seed=seed)
    if objective == "pae":
        return JointSPN(data.event_shape, data.leaf, Normal(), latent_dim, **structure)
    return RatSPN(data.event_shape, leaf=data.leaf, **structure)


def distribution(network: RatSPN | JointSPN, **options) -> SPNDistribution | MarginalSPNDistribution:
    """The circuit as a distribution of the data (a joint circuit's data marginal)."""
    return network.distribution(**options) if isinstance(network, JointSPN) else SPNDistribution(network, **options)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objective", default="mmd", choices=("mmd", "adv", "pae"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01, help="the circuit's (and learned τ's) Adam learning rate")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--sums", type=int, default=10)
    parser.add_argument("--leaves", type=int, default=10)
    parser.add_argument("--output", default="runs/examples/temperature_ablation",
                        help="folder for pictures and results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (also on when CI is set)")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    epochs, max_batches = (1, 3) if smoke else (options.epochs, None)
    size = (2, 2, 3, 3) if smoke else (options.depth, options.repetitions, options.sums, options.leaves)
    out = output_dir(options.output)
    with single_thread():
        start = time.perf_counter()

        data = load_dataset("digits", leaf="binomial", seed=options.seed, num_samples=200 if smoke else None)
        event_shape = tuple(data.event_shape)
        print(f"digits: {tuple(data.train.shape)} train, {tuple(data.val.shape)} validation; objective "
              f"{options.objective}; {epochs} epoch(s)", flush=True)
        results: dict[str, dict[str, float]] = {}
        grids = []
        for name, schedule in SCHEDULES.items():
            torch.manual_seed(options.seed)
            objective = make_objective(options.objective, event_shape=event_shape, scale=data.scale)
            spn = build(options.objective, data, size, 4 if smoke else 8, options.seed)
            temperature = make_temperature(**schedule)
            optimizer = torch.optim.Adam(list(spn.parameters()) + list(temperature.parameters()), lr=options.lr)
            generator = torch.Generator().manual_seed(options.seed)
            for epoch in range(epochs):
                temperature.step(epoch, epochs)
                order = torch.randperm(data.train.shape[0], generator=generator)
                losses = []
                for number, index in enumerate(order.split(options.batch_size)):
                    if max_batches is not None and number >= max_batches:
                        break
                    batch = data.train[index]
                    objective.auxiliary_step(distribution(spn, temperature=temperature(), hard=False), batch)
                    loss = objective.loss(distribution(spn, temperature=temperature(), hard=False), batch)
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss.detach()))
            d = distribution(spn, temperature=temperature().detach())
            with torch.no_grad():
                val_nll = -float(d.log_prob(data.val).mean())
                samples = d.sample((16,)).float() / data.scale
            results[name] = {"tau": float(temperature().detach()), "loss": sum(losses) / len(losses),
                             "val_nll": val_nll}
            grids.append(make_grid(samples.repeat_interleave(4, -2).repeat_interleave(4, -1), nrow=4, padding=2,
                                   pad_value=0.5))
            print(f"{name:>11}: final τ {results[name]['tau']:.3f}  last-epoch loss {results[name]['loss']:.4f}  "
                  f"val NLL {val_nll:.2f} nats", flush=True)

    picture = out / "samples.png"
    save_image(make_grid(torch.stack(grids), nrow=len(grids), padding=6, pad_value=1.0), picture)
    seconds = time.perf_counter() - start
    summary = {"objective": options.objective, "epochs": epochs, "order": list(SCHEDULES), "results": results,
               "smoke_test": smoke, "seconds": seconds}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"({seconds:.1f} s) wrote {picture} (grids left to right: {', '.join(SCHEDULES)}) and "
          f"{out / 'results.json'}")


if __name__ == "__main__":
    main()
