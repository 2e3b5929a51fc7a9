"""An SPN as the variational guide of a Pyro model with a multimodal posterior, against ``AutoNormal``.

The model: ``z ∈ R²``, ``z ~ N(0, 3² I)``, ``x ~ N(z², 0.5² I)`` observed at ``x = (4, 4)``. Every coordinate
of the posterior has two modes (``z_i ≈ ±2``), so the posterior has four modes at ``(±2, ±2)``.

* The SPN guide is a :class:`pyro_spn.SPNDistribution` over ``z`` with Normal leaves, sampled with the
  straight-through estimator (``hard=True``, the default): its samples are exact samples of the circuit, so
  ``log_prob`` of what the guide drew is exact and ``Trace_ELBO`` is a valid bound; gradients flow through
  the relaxed path. Leaf locations start spread over ``[-1.5, 1.5]`` with scale 0.1 (components must start on
  both sides of the likelihood's barrier at ``z = 0``).
* ``AutoNormal`` (a mean-field Gaussian) can cover only one mode per coordinate: its ELBO stays about
  ``2 log 2`` below ``log p(x)``.

Printed: both final ELBOs (estimated with many particles) and ``log p(x)`` by quadrature (the coordinates are
independent a priori and in the likelihood, so it is twice a 1-D integral). Written: ``posteriors.png``, three
density heatmaps side by side (left to right: the exact posterior, the SPN guide, AutoNormal), each with
guide samples as red dots (none on the exact posterior), and ``results.json``.

Run::

    python examples/spn_guide.py                       # full run (a few seconds)
    python examples/spn_guide.py --smoke-test          # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Normal

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import density_tile, output_dir, single_thread, smoke_mode, svi_parser  # noqa: E402

X_OBS = 4.0
PRIOR_SCALE = 3.0
LIK_SCALE = 0.5
EXTENT = 3.5  # pictures span [-EXTENT, EXTENT]²


def model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), PRIOR_SCALE).to_event(1))
    pyro.sample("x", dist.Normal(z**2, LIK_SCALE).to_event(1), obs=torch.full((2,), X_OBS))


def log_joint(z: Tensor) -> Tensor:
    """``log p(z, x)`` for points ``z [M, 2]`` → ``[M]``."""
    prior = dist.Normal(0.0, PRIOR_SCALE).log_prob(z).sum(-1)
    return prior + dist.Normal(z**2, LIK_SCALE).log_prob(torch.full_like(z, X_OBS)).sum(-1)


def log_evidence() -> float:
    """``log p(x)`` by quadrature on a fine grid (twice the 1-D integral: the coordinates are independent)."""
    z = torch.linspace(-8.0, 8.0, 160_001, dtype=torch.float64)
    joint = dist.Normal(0.0, PRIOR_SCALE).log_prob(z) + dist.Normal(z**2, LIK_SCALE).log_prob(
        torch.tensor(X_OBS, dtype=torch.float64))
    return 2.0 * (torch.logsumexp(joint, 0) + math.log(float(z[1] - z[0]))).item()


def elbo(guide, particles: int, seed: int) -> float:
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0).loss
        return -loss(model, guide)


def train(guide, steps: int, lr: float, particles: int, seed: int) -> list[float]:
    pyro.set_rng_seed(seed)
    svi = SVI(model, guide, Adam({"lr": lr}),
              Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0))
    return [svi.step() for _ in range(steps)]


def main(args: list[str] | None = None) -> None:
    parser = svi_parser(__doc__.split("\n\n")[0], "runs/examples/spn_guide")
    parser.add_argument("--tau", type=float, default=0.5, help="Gumbel-Softmax temperature of the SPN guide")
    parser.add_argument("--components", type=int, default=4, help="leaf components per variable")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    steps = 100 if smoke else options.steps
    eval_particles = 1000 if smoke else options.eval_particles
    out = output_dir(options.output)
    start = time.perf_counter()
    with single_thread():
        evidence = log_evidence()
        k = options.components
        spn = RatSPN(2, depth=1, num_repetitions=2, num_sums=k, num_leaves=k, leaf=Normal(), seed=options.seed)
        with torch.no_grad():
            spn.leaf_layer.loc.copy_(torch.linspace(-1.5, 1.5, k).view(1, 1, k, 1).expand_as(spn.leaf_layer.loc))
            spn.leaf_layer.raw_scale.fill_(math.log(math.expm1(0.1)))

        def spn_guide() -> None:
            pyro.module("spn", spn)
            pyro.sample("z", SPNDistribution(spn, temperature=options.tau))

        pyro.clear_param_store()
        spn_losses = train(spn_guide, steps, options.lr, options.particles, options.seed)
        spn_elbo = elbo(spn_guide, eval_particles, options.seed + 12345)

        pyro.clear_param_store()
        auto = AutoNormal(model)
        auto_losses = train(auto, steps, options.lr, options.particles, options.seed)
        auto_elbo = elbo(auto, eval_particles, options.seed + 12345)

        with torch.no_grad():
            pyro.set_rng_seed(options.seed + 1)
            spn_samples = SPNDistribution(spn).sample((400,))
            loc, scale = auto._get_loc_and_scale("z")
            auto_dist = dist.Normal(loc.detach(), scale.detach()).to_event(1)
            auto_samples = auto_dist.sample((400,))
        tiles = [density_tile(log_joint, None, EXTENT),
                 density_tile(SPNDistribution(spn).log_prob, spn_samples, EXTENT),
                 density_tile(auto_dist.log_prob, auto_samples, EXTENT)]
        picture = out / "posteriors.png"
        save_image(make_grid(torch.stack(tiles), nrow=3, padding=4, pad_value=1.0), picture)

    results = {"log_evidence": evidence, "spn_guide_elbo": spn_elbo, "autonormal_elbo": auto_elbo,
               "elbo_particles": eval_particles, "steps": steps, "smoke_test": smoke,
               "spn_final_train_loss": sum(spn_losses[-50:]) / len(spn_losses[-50:]),
               "autonormal_final_train_loss": sum(auto_losses[-50:]) / len(auto_losses[-50:]),
               "spn_fraction_near_modes": float(((spn_samples.abs() - 2).abs() < 0.5).all(1).float().mean()),
               "seconds": time.perf_counter() - start}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"log p(x) (quadrature)        = {evidence:8.3f}")
    print(f"ELBO, SPN guide              = {spn_elbo:8.3f}  (gap {evidence - spn_elbo:.3f})")
    print(f"ELBO, AutoNormal             = {auto_elbo:8.3f}  (gap {evidence - auto_elbo:.3f}; 2 log 2 = "
          f"{2 * math.log(2):.3f})")
    print(f"({eval_particles} particles; {steps} SVI steps per guide, {results['seconds']:.1f} s)")
    print(f"wrote {picture} (left to right: exact posterior, SPN guide, AutoNormal) and {out / 'results.json'}")


if __name__ == "__main__":
    main()
