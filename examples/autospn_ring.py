"""``AutoSPN`` on a ring-shaped posterior, against ``AutoNormal`` and ``AutoMultivariateNormal``.

The model: ``z ∈ R²``, ``z ~ N(0, 2² I)``, ``x ~ N(‖z‖, 0.25²)`` observed at ``x = 2``. The posterior is a ring of
radius about 2: no Gaussian fits it (both Gaussian autoguides settle on a blob of one side of the ring), while the
circuit of :class:`pyro_spn.infer.AutoSPN`, a mixture of hundreds of Gaussians trained with the exact pathwise
gradient of its samples (``estimator="implicit"``), covers the whole ring.

Printed: each guide's final ELBO (estimated with many particles), its gap to ``log p(x)`` computed by quadrature,
and the training time. Written: ``posteriors.png``, four density heatmaps side by side (left to right: the exact
posterior, AutoSPN, AutoNormal, AutoMultivariateNormal), each guide's with 400 of its samples as red dots, and
``results.json``.

Run::

    python examples/autospn_ring.py                    # full run (a few minutes on 2 CPU cores)
    python examples/autospn_ring.py --steps 200        # shorter
    python examples/autospn_ring.py --smoke-test       # tiny run (also when the CI variable is set)
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
from pyro.infer.autoguide import AutoGuide, AutoMultivariateNormal, AutoNormal
from pyro.optim import ClippedAdam
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pyro_spn.infer import AutoSPN

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import density_tile, output_dir, single_thread, smoke_mode, svi_parser  # noqa: E402

PRIOR_SCALE = 2.0
RADIUS = 2.0  # the observed norm
NOISE = 0.25
EXTENT = 3.5  # pictures span [-EXTENT, EXTENT]²


def model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), PRIOR_SCALE).to_event(1))
    pyro.sample("x", dist.Normal(z.norm(dim=-1), NOISE), obs=torch.tensor(RADIUS))


def log_joint(z: Tensor) -> Tensor:
    """``log p(z, x)`` for points ``z [M, 2]`` → ``[M]``."""
    prior = dist.Normal(torch.zeros(2, dtype=z.dtype), PRIOR_SCALE).log_prob(z).sum(-1)
    return prior + dist.Normal(z.norm(dim=-1), NOISE).log_prob(torch.tensor(RADIUS, dtype=z.dtype))


def log_evidence(size: int = 2001, extent: float = 8.0) -> float:
    """``log p(x)`` by quadrature on a ``size × size`` grid over ``[-extent, extent]²`` (float64)."""
    axis = torch.linspace(-extent, extent, size, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    return (torch.logsumexp(log_joint(points), 0) + 2 * math.log(float(axis[1] - axis[0]))).item()


def train(guide: AutoGuide, steps: int, lr: float, particles: int, seed: int) -> float:
    """Fits ``guide`` by SVI (Adam, the learning rate decayed by e over the run); returns the seconds taken."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    decay = math.exp(-1 / max(steps, 1))
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "lrd": decay}),
              Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0))
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    return time.perf_counter() - start


def elbo(guide: AutoGuide, particles: int, seed: int) -> float:
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        return -Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=0).loss(model, guide)


def guide_distribution(guide: AutoGuide) -> dist.Distribution:
    """The guide's distribution of ``z`` (the only latent, of real support: its unconstrained value is itself)."""
    with torch.no_grad():
        if isinstance(guide, AutoNormal):
            loc, scale = guide._get_loc_and_scale("z")
            return dist.Normal(loc.detach(), scale.detach()).to_event(1)
        assert isinstance(guide, AutoSPN | AutoMultivariateNormal)
        return guide.get_posterior()


def main(args: list[str] | None = None) -> None:
    parser = svi_parser(__doc__.split("\n\n")[0], "runs/examples/autospn_ring")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    steps = 20 if smoke else options.steps
    eval_particles = 500 if smoke else options.eval_particles
    out = output_dir(options.output)
    results: dict[str, object] = {"log_evidence": log_evidence(), "steps": steps, "elbo_particles": eval_particles,
                                  "smoke_test": smoke}
    guides: dict[str, AutoGuide] = {"AutoSPN": AutoSPN(model, seed=options.seed), "AutoNormal": AutoNormal(model),
                                    "AutoMultivariateNormal": AutoMultivariateNormal(model)}
    tiles = [density_tile(log_joint, None, EXTENT)]
    with single_thread():
        for name, guide in guides.items():
            seconds = train(guide, steps, options.lr, options.particles, options.seed)
            value = elbo(guide, eval_particles, options.seed + 12345)
            results[name] = {"elbo": value, "gap": results["log_evidence"] - value, "seconds": seconds}  # type: ignore
            pyro.set_rng_seed(options.seed + 1)
            posterior = guide_distribution(guide)
            tiles.append(density_tile(posterior.log_prob, posterior.sample((400,)), EXTENT))
    picture = out / "posteriors.png"
    save_image(make_grid(torch.stack(tiles), nrow=len(tiles), padding=4, pad_value=1.0), picture)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"log p(x) (quadrature)    = {results['log_evidence']:8.3f}")
    for name in guides:
        row = results[name]
        assert isinstance(row, dict)
        print(f"ELBO {name:<23} = {row['elbo']:8.3f}  (gap {row['gap']:.3f} nat, {row['seconds']:.0f} s)")
    print(f"({eval_particles} particles; {steps} SVI steps per guide)")
    print(f"wrote {picture} (left to right: exact posterior, AutoSPN, AutoNormal, AutoMultivariateNormal) and "
          f"{out / 'results.json'}")


if __name__ == "__main__":
    main()
