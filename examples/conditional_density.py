"""Conditional density estimation with an amortized circuit: a network outputs a circuit's parameters per input.

The task: ``x ~ U(-1, 1)`` and ``y ∈ R²`` on one of three arms at angles ``2πk/3 + πx`` (radius 1, noise 0.1):
``p(y | x)`` has three modes that rotate with ``x``. Three heads of equal size (the same two-hidden-layer network,
its width set so that the parameter counts match) are trained by maximum likelihood:

* **SPN**: the network outputs the flat parameters of a small circuit with Normal leaves over ``y``
  (``SPNDistribution(spn, flat_parameters=net(x))``, batch shape ``[N]``);
* **Gaussian**: a diagonal Gaussian (mean and log-scale);
* **MDN**: a mixture density network, a mixture of diagonal Gaussians.

Printed: the test NLL (nats per example) of each head. Written: ``conditionals.png`` (rows: ``x = -0.6, 0, 0.6``;
columns: the true ``p(y | x)``, SPN, Gaussian, MDN; test points with ``|x' - x| < 0.05`` as red dots) and
``results.json``.

Run::

    python examples/conditional_density.py                 # full run (about a minute)
    python examples/conditional_density.py --smoke-test    # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import density_tile, mlp, output_dir, single_thread, smoke_mode  # noqa: E402

ARMS, NOISE, EXTENT = 3, 0.1, 1.6
SLICES = (-0.6, 0.0, 0.6)


def arm_angles(x: Tensor) -> Tensor:
    """The arms' angles ``[N, ARMS]`` at inputs ``x [N, 1]``."""
    return 2 * math.pi * torch.arange(ARMS) / ARMS + math.pi * x


def true_log_density(x: Tensor, y: Tensor) -> Tensor:
    """``log p(y | x)`` ``[M]`` for inputs ``x [M, 1]`` and ``y [M, 2]``."""
    angles = arm_angles(x)  # [M, ARMS]
    centers = torch.stack([angles.cos(), angles.sin()], -1)  # [M, ARMS, 2]
    log_p = dist.Normal(centers, NOISE).log_prob(y[:, None, :]).sum(-1)  # [M, ARMS]
    return log_p.logsumexp(1) - math.log(ARMS)


def draw(n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``(x [n, 1], y [n, 2])``."""
    x = torch.rand((n, 1), generator=generator) * 2 - 1
    arm = torch.randint(0, ARMS, (n, 1), generator=generator)
    angle = arm_angles(x).gather(1, arm)
    y = torch.cat([angle.cos(), angle.sin()], 1) + NOISE * torch.randn((n, 2), generator=generator)
    return x, y


class SPNHead(nn.Module):
    """``p(y | x)`` as a circuit whose flat parameters a network computes from ``x`` (the circuit's own parameters are
    unused: they only seed the network's output bias)."""

    def __init__(self, budget: int, components: int, seed: int) -> None:
        super().__init__()
        self.spn = RatSPN(2, depth=1, num_repetitions=3, num_sums=components, num_leaves=components, leaf=Normal(),
                          seed=seed)
        self.net = mlp(1, self.spn.flat_parameter_size, budget)
        with torch.no_grad():  # start at the circuit's own initialization, leaf locations spread over the plane
            self.net[-1].weight.mul_(0.1)
            self.net[-1].bias.copy_(self.spn.flatten_parameters())
            loc = self.spn.unflatten_parameters(self.net[-1].bias)["leaf_layer.loc"]
            loc.copy_(torch.empty_like(loc).uniform_(-1.2, 1.2))

    def distribution(self, x: Tensor) -> SPNDistribution:
        return SPNDistribution(self.spn, flat_parameters=self.net(x))


class GaussianHead(nn.Module):
    """A diagonal Gaussian ``p(y | x)``."""

    def __init__(self, budget: int) -> None:
        super().__init__()
        self.net = mlp(1, 4, budget)

    def distribution(self, x: Tensor) -> dist.Distribution:
        loc, log_scale = self.net(x).chunk(2, -1)
        return dist.Normal(loc, log_scale.exp()).to_event(1)


class MDNHead(nn.Module):
    """A mixture of ``components`` diagonal Gaussians ``p(y | x)``."""

    def __init__(self, budget: int, components: int) -> None:
        super().__init__()
        self.components = components
        self.net = mlp(1, 5 * components, budget)

    def distribution(self, x: Tensor) -> dist.Distribution:
        out = self.net(x)
        logits = out[:, : self.components]
        loc, log_scale = out[:, self.components:].reshape(-1, self.components, 2, 2).unbind(2)
        return dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                      dist.Normal(loc, log_scale.exp()).to_event(1))


def fit(head: nn.Module, x: Tensor, y: Tensor, steps: int, lr: float) -> list[float]:
    """Full-batch maximum likelihood with Adam; the training NLL of every step."""
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = -head.distribution(x).log_prob(y).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1500, help="full-batch Adam steps per head")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--train", type=int, default=2000, help="training examples")
    parser.add_argument("--components", type=int, default=4, help="the circuit's leaf components and sums per region")
    parser.add_argument("--mdn-components", type=int, default=6, help="the MDN's mixture components")
    parser.add_argument("--output", default="runs/examples/conditional_density", help="folder for results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (also on when CI is set)")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    steps, n_train = (20, 256) if smoke else (options.steps, options.train)
    out = output_dir(options.output)
    start = time.perf_counter()
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    x, y = draw(n_train, generator)
    x_test, y_test = draw(2000, generator)
    with single_thread():
        spn_head = SPNHead(4000, options.components, options.seed)
        budget = sum(p.numel() for p in spn_head.net.parameters())
        heads = {"SPN": spn_head, "Gaussian": GaussianHead(budget), "MDN": MDNHead(budget, options.mdn_components)}
        results: dict[str, dict[str, float]] = {}
        for name, head in heads.items():
            losses = fit(head, x, y, steps, options.lr)
            with torch.no_grad():
                test_nll = -float(head.distribution(x_test).log_prob(y_test).mean())
            results[name] = {"test_nll": test_nll, "train_nll": losses[-1],
                             "parameters": sum(p.numel() for p in head.net.parameters())}
        with torch.no_grad():
            true_nll = -float(true_log_density(x_test, y_test).mean())
            tiles = []
            for value in SLICES:
                near = y_test[(x_test[:, 0] - value).abs() < 0.05]
                tiles.append(density_tile(lambda grid, v=value: true_log_density(torch.full((len(grid), 1), v), grid),
                                          near, EXTENT, 128))
                for head in heads.values():
                    def log_density(grid: Tensor, h: nn.Module = head, v: float = value) -> Tensor:
                        return h.distribution(torch.full((len(grid), 1), v)).log_prob(grid)
                    tiles.append(density_tile(log_density, near, EXTENT, 128))
        picture = out / "conditionals.png"
        save_image(make_grid(torch.stack(tiles), nrow=4, padding=4, pad_value=1.0), picture)

    summary = {"heads": results, "true_test_nll": true_nll, "steps": steps, "train_examples": n_train,
               "smoke_test": smoke, "seconds": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"test NLL (nats per example; the true conditional's is {true_nll:.3f}):")
    for name, result in results.items():
        print(f"  {name:9s} {result['test_nll']:7.3f}   ({result['parameters']} parameters)")
    print(f"wrote {picture} (rows x = {', '.join(map(str, SLICES))}; columns: truth, SPN, Gaussian, MDN) and "
          f"{out / 'results.json'}  [{summary['seconds']:.0f} s]")


if __name__ == "__main__":
    main()
