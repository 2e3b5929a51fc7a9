"""An SPN as the learned prior ``p(z)`` of a variational auto-encoder on digits, against a standard Normal prior.

The data are scikit-learn's 8 × 8 digits binarized at half range (``load_dataset("digits", leaf="bernoulli")``).
Both models share the architecture and training; only the prior differs:

* model: ``z ~ p(z)`` over ``--latent-dim`` latents, ``x ~ Bernoulli(logits=decoder(z))`` (an MLP decoder),
  with ``p(z)`` either ``N(0, I)`` or a :class:`pyro_spn.SPNDistribution` over the latents (Normal leaves),
  whose parameters are learned with the decoder (``pyro.module("prior", spn)``): the ELBO scores the
  encoder's ``z`` under the circuit's exact ``log_prob``;
* guide: an MLP encoder, ``q(z | x) = N(μ(x), diag σ(x)²)``;
* ``SVI`` with ``Trace_ELBO`` and Adam.

Printed and saved to ``results.json``: the test ELBO per image (nats; higher is better) of both models.
Pictures: ``prior_samples.png``, decoder means of 64 draws from each prior side by side (left: standard
Normal prior, right: SPN prior), also written separately as ``samples_normal.png`` and ``samples_spn.png``.

Run::

    python examples/spn_prior_vae.py                   # full run (a minute or two on 2 cores)
    python examples/spn_prior_vae.py --smoke-test      # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import Tensor, nn
from torchvision.utils import make_grid, save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.data import load_dataset
from pyro_spn.leaves import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import output_dir, single_thread, smoke_mode  # noqa: E402


class VAE(nn.Module):
    """Encoder, decoder and prior (``spn=None``: standard Normal) of a VAE over flat binary data."""

    def __init__(self, num_features: int, latent_dim: int, hidden: int, spn: RatSPN | None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_features))
        self.spn = spn

    def prior(self) -> dist.Distribution:
        if self.spn is None:
            return dist.Normal(torch.zeros(self.latent_dim), 1.0).to_event(1)
        return SPNDistribution(self.spn)

    def model(self, x: Tensor) -> None:
        pyro.module("decoder", self.decoder)
        if self.spn is not None:
            pyro.module("prior", self.spn)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x: Tensor) -> None:
        pyro.module("encoder", self.encoder)
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, F.softplus(raw_scale) + 1e-3).to_event(1))

    def decoded_samples(self, n: int) -> Tensor:
        """Decoder means (pixel probabilities) of ``n`` prior draws, ``[n, num_features]``."""
        with torch.no_grad():
            return torch.sigmoid(self.decoder(self.prior().sample((n,))))


def train(vae: VAE, train_x: Tensor, epochs: int, batch_size: int, lr: float, seed: int) -> float:
    """Trains with SVI; returns the last epoch's mean training ELBO per image."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = SVI(vae.model, vae.guide, Adam({"lr": lr}), Trace_ELBO())
    elbo = 0.0
    for _ in range(epochs):
        total = 0.0
        for index in torch.randperm(train_x.shape[0]).split(batch_size):
            total += svi.step(train_x[index])
        elbo = -total / train_x.shape[0]
    return elbo


def evaluate(vae: VAE, x: Tensor, particles: int, seed: int) -> float:
    """The ELBO per image of ``x``, estimated with ``particles`` samples per image."""
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1).loss
        return -loss(vae.model, vae.guide, x) / x.shape[0]


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    parser.add_argument("--latent-dim", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256, help="hidden units of encoder and decoder")
    parser.add_argument("--components", type=int, default=8, help="SPN prior: leaf components and sum units")
    parser.add_argument("--repetitions", type=int, default=4, help="SPN prior: repetitions")
    parser.add_argument("--eval-particles", type=int, default=32, help="particles of the test ELBO estimate")
    parser.add_argument("--output", default="runs/examples/spn_prior_vae", help="folder for pictures and results")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--smoke-test", action="store_true", help="tiny run (also on when CI is set)")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    epochs = 2 if smoke else options.epochs
    out = output_dir(options.output)
    start = time.perf_counter()

    data = load_dataset("digits", leaf="bernoulli", seed=options.seed, num_samples=200 if smoke else None)
    train_x, test_x = data.train.flatten(1), data.test.flatten(1)
    num_features = train_x.shape[1]
    results: dict[str, dict[str, float]] = {}
    pictures = {}
    with single_thread():
        for name in ("normal", "spn"):
            torch.manual_seed(options.seed)
            spn = None
            if name == "spn":
                depth = 1 if options.latent_dim < 4 else 2
                spn = RatSPN(options.latent_dim, depth=depth, num_repetitions=options.repetitions,
                             num_sums=options.components, num_leaves=options.components, leaf=Normal(),
                             seed=options.seed)
            vae = VAE(num_features, options.latent_dim, options.hidden, spn)
            train_elbo = train(vae, train_x, epochs, options.batch_size, options.lr, options.seed)
            test_elbo = evaluate(vae, test_x, options.eval_particles, options.seed + 1)
            results[name] = {"train_elbo": train_elbo, "test_elbo": test_elbo}
            pyro.set_rng_seed(options.seed + 2)
            images = vae.decoded_samples(64).reshape(-1, 1, *data.event_shape[-2:])
            images = images.repeat_interleave(4, -2).repeat_interleave(4, -1)
            pictures[name] = make_grid(images, nrow=8, padding=2, pad_value=0.5)
            save_image(pictures[name], out / f"samples_{name}.png")
            print(f"{name:>6} prior: train ELBO {train_elbo:8.3f}  test ELBO {test_elbo:8.3f} nats/image", flush=True)

    picture = out / "prior_samples.png"
    save_image(make_grid(torch.stack([pictures["normal"], pictures["spn"]]), nrow=2, padding=8, pad_value=1.0),
               picture)
    seconds = time.perf_counter() - start
    summary = {"results": results, "epochs": epochs, "latent_dim": options.latent_dim, "smoke_test": smoke,
               "seconds": seconds}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    print(f"SPN prior − Normal prior, test ELBO: {results['spn']['test_elbo'] - results['normal']['test_elbo']:+.3f}"
          f" nats/image ({epochs} epochs, {seconds:.1f} s)")
    print(f"wrote {picture} (left: Normal prior, right: SPN prior) and {out / 'results.json'}")


if __name__ == "__main__":
    main()
