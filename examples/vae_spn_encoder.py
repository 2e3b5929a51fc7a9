"""A VAE whose encoder outputs a circuit: the amortized posterior ``q(z | x)`` is an SPN, against a Gaussian encoder.

The model: ``z ∈ R^d ~ N(0, I)``, ``x | z ~ Binomial(16, sigmoid(decoder(z)))`` per pixel of the 8×8 digits
(values 0..16). Two guides of equal size (encoder networks whose widths match their parameter counts):

* **SPN encoder**: ``q(z | x) = SPNDistribution(spn, flat_parameters=encoder(x))``, a circuit with Normal leaves over
  ``z`` per image, sampled straight-through (exact samples, so ``log q`` of what was drawn is exact and
  ``Trace_ELBO`` is a valid bound; relaxed gradients through the sum nodes' choices, pathwise through the leaves);
* **Gaussian encoder**: the usual diagonal Gaussian.

Each pairs with its own decoder (same architecture) trained jointly by SVI. Printed: the test ELBO (nats per image,
many particles) of both. Written: ``reconstructions.png`` (rows: test digits, the SPN VAE's and the Gaussian VAE's
mean reconstructions from one posterior draw) and ``results.json``.

Run::

    python examples/vae_spn_encoder.py                 # full run (a few minutes)
    python examples/vae_spn_encoder.py --smoke-test    # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import Tensor, nn
from torchvision.utils import save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.data import load_dataset
from pyro_spn.leaves import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import batches, mlp, output_dir, single_thread, smoke_mode, svi_parser  # noqa: E402

TOTAL_COUNT = 16
PIXELS = 64


def make_model(decoder: nn.Module, latent: int, name: str) -> Callable[[Tensor], None]:
    """The generative model ``p(z) p(x | z)`` with its own decoder (``name`` keeps the param-store entries apart)."""

    def model(x: Tensor) -> None:
        pyro.module(f"{name}_decoder", decoder)
        with pyro.plate("images", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(latent), 1.0).to_event(1))
            pyro.sample("x", dist.Binomial(TOTAL_COUNT, logits=decoder(z)).to_event(1), obs=x)

    return model


def spn_guide(encoder: nn.Module, spn: RatSPN, temperature: float) -> Callable[[Tensor], None]:
    def guide(x: Tensor) -> None:
        pyro.module("spn_encoder", encoder)
        with pyro.plate("images", len(x)):
            pyro.sample("z", SPNDistribution(spn, flat_parameters=encoder(x / TOTAL_COUNT), temperature=temperature))

    return guide


def gaussian_guide(encoder: nn.Module) -> Callable[[Tensor], None]:
    def guide(x: Tensor) -> None:
        pyro.module("gaussian_encoder", encoder)
        loc, log_scale = encoder(x / TOTAL_COUNT).chunk(2, -1)
        with pyro.plate("images", len(x)):
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return guide


def test_elbo(model: Callable, guide: Callable, x: Tensor, particles: int) -> float:
    """The ELBO per image on ``x`` (``particles`` draws per image)."""
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1).loss(model, guide, x)
    return -loss / len(x)


def reconstruct(model: Callable, guide: Callable, decoder: nn.Module, x: Tensor) -> Tensor:
    """The decoder's mean image ``[n, 64]`` at one posterior draw per image."""
    with torch.no_grad():
        trace = pyro.poutine.trace(guide).get_trace(x)
        return torch.sigmoid(decoder(trace.nodes["z"]["value"]))


def main(args: list[str] | None = None) -> None:
    parser = svi_parser(__doc__.split("\n\n")[0], "runs/examples/vae_spn_encoder")
    parser.add_argument("--epochs", type=int, default=60, help="passes over the training images")
    parser.add_argument("--latent", type=int, default=4, help="latent dimension d")
    parser.add_argument("--components", type=int, default=3, help="the circuit's leaf components and sums per region")
    parser.add_argument("--tau", type=float, default=0.5, help="Gumbel-Softmax temperature of the SPN encoder")
    parser.set_defaults(lr=3e-3, particles=1, eval_particles=64)
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    epochs, eval_particles = (1, 4) if smoke else (options.epochs, options.eval_particles)
    out = output_dir(options.output)
    start = time.perf_counter()
    pyro.set_rng_seed(options.seed)
    data = load_dataset("digits", seed=options.seed, num_samples=256 if smoke else None)
    train, test = data.train.flatten(1), data.test.flatten(1)
    d, k = options.latent, options.components
    spn = RatSPN(d, depth=2, num_repetitions=2, num_sums=k, num_leaves=k, leaf=Normal(), seed=options.seed)
    spn_encoder = mlp(PIXELS, spn.flat_parameter_size, 20_000)
    with torch.no_grad():  # start at the circuit's own initialization
        spn_encoder[-1].weight.mul_(0.1)
        spn_encoder[-1].bias.copy_(spn.flatten_parameters())
    budget = sum(p.numel() for p in spn_encoder.parameters())
    runs = {"SPN": (spn_guide(spn_encoder, spn, options.tau), mlp(d, PIXELS, 5_000)),
            "Gaussian": (gaussian_guide(mlp(PIXELS, 2 * d, budget)), mlp(d, PIXELS, 5_000))}
    results: dict[str, dict[str, float]] = {}
    pictures = [test[:12] / TOTAL_COUNT]
    pyro.clear_param_store()
    with single_thread():
        for name, (guide, decoder) in runs.items():
            model = make_model(decoder, d, name)
            svi = SVI(model, guide, Adam({"lr": options.lr}),
                      Trace_ELBO(num_particles=options.particles, vectorize_particles=True, max_plate_nesting=1))
            for _ in range(epochs):
                for x in batches(train, 64, max_batches=3 if smoke else None):
                    svi.step(x)
            elbo = test_elbo(model, guide, test, eval_particles)
            results[name] = {"test_elbo": elbo}
            pictures.append(reconstruct(model, guide, decoder, test[:12]))
    results["SPN"]["encoder_parameters"] = budget
    results["Gaussian"]["encoder_parameters"] = sum(
        p.numel() for name, p in pyro.get_param_store().named_parameters() if name.startswith("gaussian_encoder"))
    picture = out / "reconstructions.png"
    grid = torch.stack(pictures).reshape(-1, 1, 8, 8)
    save_image(grid, picture, nrow=12, padding=1, pad_value=1.0)
    summary = {"guides": results, "latent_dim": d, "epochs": epochs, "eval_particles": eval_particles,
               "smoke_test": smoke, "seconds": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"test ELBO (nats per image, {eval_particles} particles; higher is better):")
    for name, result in results.items():
        print(f"  {name:9s} encoder {result['test_elbo']:9.2f}   ({int(result['encoder_parameters'])} encoder "
              f"parameters)")
    print(f"wrote {picture} (rows: test digits, SPN VAE, Gaussian VAE) and {out / 'results.json'}  "
          f"[{summary['seconds']:.0f} s]")


if __name__ == "__main__":
    main()
