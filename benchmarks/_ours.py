"""Benchmark adapter for pyro_spn (this repository), run with the project's virtual environment."""

from __future__ import annotations

from collections.abc import Callable

import torch
from _common import (
    ADV_STEP,
    ADV_STEP_SCORE,
    LOG_PROB,
    MMD_STEP,
    MMD_STEP_SCORE,
    RSAMPLE_SOFT_REGION,
    RSAMPLE_SOFT_UNIT,
    RSAMPLE_ST,
    SAMPLE,
    TAU,
    TRAIN_STEP,
    Built,
    Config,
    backward_of_linear_op,
    random_data,
    train_step_op,
)

import pyro_spn
from pyro_spn import RatSPN, SPNDistribution, native
from pyro_spn.leaves import Binomial
from pyro_spn.objectives import Objective, make_objective


def objective_step_op(spn: RatSPN, objective: Objective, x: torch.Tensor) -> Callable[[], None]:
    """One training step of a sample-based objective as ``pyrospn-train`` runs it: the objective's own update
    (discriminator or kernel encoder), then the circuit's loss (with the objective's estimator: soft per-unit samples
    at τ = 0.5, or exact samples and the score function), its backward and an Adam step."""
    optimizer = torch.optim.Adam(spn.parameters())

    def step() -> None:
        d = SPNDistribution(spn, temperature=TAU, hard=False)
        objective.auxiliary_step(d, x)
        optimizer.zero_grad(set_to_none=True)
        objective.loss(d, x).backward()
        optimizer.step()

    return step


def build(cfg: Config) -> Built:
    """``RatSPN`` with Binomial leaves wrapped in ``SPNDistribution``; the differentiable samplers at τ = 0.5."""
    spn = RatSPN(cfg.image_shape, depth=cfg.depth, num_repetitions=cfg.num_repetitions, num_sums=cfg.num_sums,
                 num_leaves=cfg.num_leaves, leaf=Binomial(total_count=cfg.total_count), seed=cfg.seed)
    x = random_data(cfg)
    n = cfg.batch
    dist = SPNDistribution(spn, temperature=TAU)
    soft_unit = SPNDistribution(spn, temperature=TAU, hard=False)
    soft_region = SPNDistribution(spn, temperature=TAU, hard=False, interpolation="region")
    scale = float(cfg.total_count)
    adversarial = make_objective("adv", event_shape=cfg.image_shape, scale=scale)
    mmd = make_objective("mmd", event_shape=cfg.image_shape, kernel="learned", scale=scale)
    adversarial_score = make_objective("adv", event_shape=cfg.image_shape, scale=scale, estimator="score")
    mmd_score = make_objective("mmd", event_shape=cfg.image_shape, kernel="learned", scale=scale, estimator="score")

    def log_prob() -> None:
        with torch.no_grad():
            dist.log_prob(x)

    def sample() -> None:
        dist.sample((n,))

    return Built(
        num_params=sum(p.numel() for p in spn.parameters()),
        description=(f"pyro_spn.RatSPN(depth={cfg.depth}, num_repetitions={cfg.num_repetitions}, "
                     f"num_sums={cfg.num_sums}, num_leaves={cfg.num_leaves}, "
                     f"leaf=Binomial({cfg.total_count})) in SPNDistribution(temperature={TAU}); ADV and MMD steps "
                     "with the default discriminator and learned kernel (make_objective), on soft per-unit samples "
                     "or with the score estimator"),
        versions={"pyro_spn": pyro_spn.__version__, "torch": torch.__version__,
                  "einsum kernel": "native" if native.available() else "PyTorch"},
        ops={
            LOG_PROB: log_prob,
            TRAIN_STEP: train_step_op(list(spn.parameters()), lambda: -dist.log_prob(x).mean()),
            SAMPLE: sample,
            RSAMPLE_ST: backward_of_linear_op(spn, lambda: dist.rsample((n,)), cfg),
            RSAMPLE_SOFT_UNIT: backward_of_linear_op(spn, lambda: soft_unit.rsample((n,)), cfg),
            RSAMPLE_SOFT_REGION: backward_of_linear_op(spn, lambda: soft_region.rsample((n,)), cfg),
            ADV_STEP: objective_step_op(spn, adversarial, x),
            MMD_STEP: objective_step_op(spn, mmd, x),
            ADV_STEP_SCORE: objective_step_op(spn, adversarial_score, x),
            MMD_STEP_SCORE: objective_step_op(spn, mmd_score, x),
        },
    )
