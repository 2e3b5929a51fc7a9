"""``AutoSPN`` on multimodal posteriors, against ``AutoNormal`` and ``AutoMultivariateNormal``.

Two models with ``z ∈ R²`` (``--posterior``):

* ``ring`` (the default): ``z ~ N(0, 2² I)``, ``x ~ N(‖z‖, 0.25²)`` observed at ``x = 2``. The posterior is a ring of
  radius about 2.
* ``four-modes``: ``z ~ N(0, 3² I)``, ``x ~ N(z², 0.5² I)`` observed at ``(4, 4)``: four narrow, separated modes at
  ``(±2, ±2)``.

No Gaussian fits either (both Gaussian autoguides settle on one side of the ring, or on one of the four modes), while
the circuit of :class:`pyro_spn.infer.AutoSPN`, a mixture of hundreds of Gaussians trained with the exact pathwise
gradient of its samples (``estimator="implicit"``), covers them. ``--elbo`` picks the circuit's ELBO estimate:
``stratified`` (:class:`pyro_spn.infer.StratifiedELBO`, one draw per child of the circuit's top sum layer per step;
the default) or ``trace`` (``Trace_ELBO`` with ``--particles`` particles, as the Gaussian guides always use).

Printed: each guide's final ELBO (estimated with many particles), its gap to ``log p(x)`` computed by quadrature,
and the training time. Written: ``posteriors.png``, four density heatmaps side by side (left to right: the exact
posterior, AutoSPN, AutoNormal, AutoMultivariateNormal), each guide's with 400 of its samples as red dots, and
``results.json``.

Run::

    python examples/autospn_ring.py                             # full run (a few minutes on 2 CPU cores)
    python examples/autospn_ring.py --posterior four-modes --steps 2000
    python examples/autospn_ring.py --elbo trace --steps 200    # Trace_ELBO for the circuit, shorter
    python examples/autospn_ring.py --smoke-test                # tiny run (also when the CI variable is set)
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO, SVI, Trace_ELBO
from pyro.infer.autoguide import AutoGuide, AutoMultivariateNormal, AutoNormal
from pyro.optim import ClippedAdam
from torch import Tensor
from torchvision.utils import make_grid, save_image

from pyro_spn.infer import AutoSPN, StratifiedELBO

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import density_tile, output_dir, single_thread, smoke_mode, svi_parser  # noqa: E402

EXTENT = 3.5  # pictures span [-EXTENT, EXTENT]²


def ring_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    pyro.sample("x", dist.Normal(z.norm(dim=-1), 0.25), obs=torch.tensor(2.0))


def ring_log_joint(z: Tensor) -> Tensor:
    """``log p(z, x)`` of the ring model for points ``z [M, 2]`` → ``[M]``."""
    prior = dist.Normal(torch.zeros(2, dtype=z.dtype), 2.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z.norm(dim=-1), 0.25).log_prob(torch.tensor(2.0, dtype=z.dtype))


def four_modes_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    pyro.sample("x", dist.Normal(z**2, 0.5).to_event(1), obs=torch.full((2,), 4.0))


def four_modes_log_joint(z: Tensor) -> Tensor:
    """``log p(z, x)`` of the four-modes model for points ``z [M, 2]`` → ``[M]``."""
    prior = dist.Normal(torch.zeros(2, dtype=z.dtype), 3.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z**2, 0.5).log_prob(torch.full((2,), 4.0, dtype=z.dtype)).sum(-1)


POSTERIORS: dict[str, tuple[Callable[[], None], Callable[[Tensor], Tensor]]] = {
    "ring": (ring_model, ring_log_joint), "four-modes": (four_modes_model, four_modes_log_joint)}


def log_evidence(log_joint: Callable[[Tensor], Tensor], size: int = 2001, extent: float = 8.0) -> float:
    """``log p(x)`` by quadrature on a ``size × size`` grid over ``[-extent, extent]²`` (float64)."""
    axis = torch.linspace(-extent, extent, size, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    return (torch.logsumexp(log_joint(points), 0) + 2 * math.log(float(axis[1] - axis[0]))).item()


def train(model: Callable[[], None], guide: AutoGuide, loss: ELBO, steps: int, lr: float, seed: int) -> float:
    """Fits ``guide`` by SVI (Adam, the learning rate decayed by e over the run); returns the seconds taken."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    decay = math.exp(-1 / max(steps, 1))
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "lrd": decay}), loss)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    return time.perf_counter() - start


def elbo(model: Callable[[], None], guide: AutoGuide, particles: int, seed: int) -> float:
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
    parser.add_argument("--posterior", choices=sorted(POSTERIORS), default="ring", help="the model")
    parser.add_argument("--elbo", choices=("stratified", "trace"), default="stratified",
                        help="the circuit's ELBO: StratifiedELBO (one draw per top-layer child) or Trace_ELBO")
    options = parser.parse_args(args)
    smoke = smoke_mode(options)
    steps = 20 if smoke else options.steps
    eval_particles = 500 if smoke else options.eval_particles
    out = output_dir(options.output)
    model, log_joint = POSTERIORS[options.posterior]
    results: dict[str, object] = {"posterior": options.posterior, "log_evidence": log_evidence(log_joint),
                                  "steps": steps, "elbo_particles": eval_particles, "spn_elbo": options.elbo,
                                  "smoke_test": smoke}
    guides: dict[str, AutoGuide] = {"AutoSPN": AutoSPN(model, seed=options.seed), "AutoNormal": AutoNormal(model),
                                    "AutoMultivariateNormal": AutoMultivariateNormal(model)}
    tiles = [density_tile(log_joint, None, EXTENT)]
    with single_thread():
        for name, guide in guides.items():
            trace = Trace_ELBO(num_particles=options.particles, vectorize_particles=True, max_plate_nesting=0)
            loss = StratifiedELBO(max_plate_nesting=0) if name == "AutoSPN" and options.elbo == "stratified" else trace
            seconds = train(model, guide, loss, steps, options.lr, options.seed)
            value = elbo(model, guide, eval_particles, options.seed + 12345)
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
    print(f"({options.posterior}; {eval_particles} particles; {steps} SVI steps per guide; AutoSPN with "
          f"{'StratifiedELBO' if options.elbo == 'stratified' else 'Trace_ELBO'})")
    print(f"wrote {picture} (left to right: exact posterior, AutoSPN, AutoNormal, AutoMultivariateNormal) and "
          f"{out / 'results.json'}")


if __name__ == "__main__":
    main()
