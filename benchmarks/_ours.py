"""Benchmark adapter for pyro_spn (this repository), run with the project's virtual environment."""

from __future__ import annotations

import torch
from _common import (
    LOG_PROB,
    RSAMPLE_SOFT_REGION,
    RSAMPLE_SOFT_UNIT,
    RSAMPLE_ST,
    SAMPLE,
    TRAIN_STEP,
    Built,
    Config,
    backward_of_mean_op,
    random_data,
    train_step_op,
)

import pyro_spn
from pyro_spn import RatSPN, SPNDistribution, native
from pyro_spn.leaves import Binomial


def build(cfg: Config) -> Built:
    """``RatSPN`` with Binomial leaves wrapped in ``SPNDistribution`` (temperature 1)."""
    spn = RatSPN(cfg.image_shape, depth=cfg.depth, num_repetitions=cfg.num_repetitions, num_sums=cfg.num_sums,
                 num_leaves=cfg.num_leaves, leaf=Binomial(total_count=cfg.total_count), seed=cfg.seed)
    x = random_data(cfg)
    n = cfg.batch
    dist = SPNDistribution(spn, temperature=1.0)
    soft_unit = SPNDistribution(spn, temperature=1.0, hard=False)
    soft_region = SPNDistribution(spn, temperature=1.0, hard=False, interpolation="region")

    def log_prob() -> None:
        with torch.no_grad():
            dist.log_prob(x)

    def sample() -> None:
        dist.sample((n,))

    return Built(
        num_params=sum(p.numel() for p in spn.parameters()),
        description=(f"pyro_spn.RatSPN(depth={cfg.depth}, num_repetitions={cfg.num_repetitions}, "
                     f"num_sums={cfg.num_sums}, num_leaves={cfg.num_leaves}, "
                     f"leaf=Binomial({cfg.total_count})) in SPNDistribution(temperature=1.0)"),
        versions={"pyro_spn": pyro_spn.__version__, "torch": torch.__version__,
                  "einsum kernel": "native" if native.available() else "PyTorch"},
        ops={
            LOG_PROB: log_prob,
            TRAIN_STEP: train_step_op(list(spn.parameters()), lambda: -dist.log_prob(x).mean()),
            SAMPLE: sample,
            RSAMPLE_ST: backward_of_mean_op(spn, lambda: dist.rsample((n,))),
            RSAMPLE_SOFT_UNIT: backward_of_mean_op(spn, lambda: soft_unit.rsample((n,))),
            RSAMPLE_SOFT_REGION: backward_of_mean_op(spn, lambda: soft_region.rsample((n,))),
        },
    )
