"""Benchmark adapters for SPFlow (PyPI ``spflow`` >= 1.1), run with the peers' virtual environment.

Two SPFlow models have exactly our parameter layout (1,280,810 parameters in the paper configuration):

* ``RatSPN(outer_product=True)``: per region an outer product of the two children's ``K`` units
  followed by a sum layer over the ``K**2`` products (SPFlow's RAT-SPN);
* ``Einet(layer_type="einsum")``: the same sum-of-outer-products as one fused einsum layer.

Both use SPFlow's random balanced factorization (``Factorize``: per repetition a random partition of the
variables into ``2**depth`` leaf regions), ``RepetitionMixingLayer`` at the root and ``Binomial`` leaves
with their default options (``validate_args=True``, Normal-approximation differentiable sampling).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import version

import numpy as np
import torch
from _common import (
    LOG_PROB,
    OBJECTIVE_STEPS,
    RSAMPLE_SOFT_REGION,
    RSAMPLE_SOFT_UNIT,
    RSAMPLE_ST,
    SAMPLE,
    TRAIN_STEP,
    Built,
    Config,
    backward_of_linear_op,
    random_data,
    train_step_op,
)
from spflow.meta.data.scope import Scope
from spflow.modules.leaves import Binomial
from spflow.modules.module import Module
from spflow.utils.cache import Cache
from spflow.utils.sampling_context import SamplingContext
from spflow.zoo.einet.einet import Einet
from spflow.zoo.rat.rat_spn import RatSPN

NO_OBJECTIVES = "no sample-based objectives (only pyro_spn's steps are timed, next to its likelihood step)"
NO_SOFT = ("SPFlow's differentiable sampling is straight-through only (SIMPLE: one-hot selections forward, "
           "softmax gradients backward); it has no soft interpolation of children")


def _leaf(cfg: Config) -> Binomial:
    return Binomial(scope=Scope(list(range(cfg.num_features))), out_channels=cfg.num_leaves,
                    num_repetitions=cfg.num_repetitions, total_count=torch.tensor(float(cfg.total_count)))


def _differentiable_sample(model: Module, cfg: Config) -> Callable[[], torch.Tensor]:
    """Differentiable sampling with SPFlow's routing (``SamplingContext(is_differentiable=True)``).

    SPFlow 1.1 has no public entry point for it on RatSPN/Einet; this sets up the context exactly as
    SPFlow's own APC encoders do (``spflow.zoo.apc.encoders.joint_pc_base._sample_joint``): a one-hot
    root channel and a placeholder repetition one-hot that the root ``RepetitionMixingLayer`` overwrites
    with its own differentiable draw.
    """
    n = cfg.batch

    def draw() -> torch.Tensor:
        repetition = torch.zeros(n, cfg.num_repetitions)
        repetition[:, 0] = 1.0
        ctx = SamplingContext(channel_index=torch.ones(n, 1, 1), mask=torch.ones(n, 1, dtype=torch.bool),
                              repetition_index=repetition, is_differentiable=True, tau=1.0)
        data = torch.full((n, cfg.num_features), float("nan"))
        return model._sample(data=data, sampling_ctx=ctx, cache=Cache())

    return draw


def _built(model: Module, cfg: Config, description: str) -> Built:
    x = random_data(cfg).reshape(cfg.batch, cfg.num_features)

    def log_prob() -> None:
        with torch.no_grad():
            model.log_likelihood(x)

    def sample() -> None:
        with torch.no_grad():
            model.sample(num_samples=cfg.batch)

    return Built(
        num_params=sum(p.numel() for p in model.parameters()),
        description=description,
        versions={"spflow": version("spflow"), "torch": torch.__version__},
        ops={
            LOG_PROB: log_prob,
            TRAIN_STEP: train_step_op(list(model.parameters()), lambda: -model.log_likelihood(x).mean()),
            SAMPLE: sample,
            RSAMPLE_ST: backward_of_linear_op(model, _differentiable_sample(model, cfg), cfg),
        },
        unsupported={RSAMPLE_SOFT_UNIT: NO_SOFT, RSAMPLE_SOFT_REGION: NO_SOFT,
                     **{op: NO_OBJECTIVES for op in OBJECTIVE_STEPS}},
    )


def build_rat(cfg: Config) -> Built:
    """SPFlow's RAT-SPN with outer-product partitions (the einsum layer's structure, unfused)."""
    np.random.seed(cfg.seed)
    model = RatSPN([_leaf(cfg)], n_root_nodes=1, n_region_nodes=cfg.num_sums,
                   num_repetitions=cfg.num_repetitions, depth=cfg.depth, outer_product=True)
    return _built(model, cfg, (f"spflow RatSPN(n_root_nodes=1, n_region_nodes={cfg.num_sums}, "
                               f"num_repetitions={cfg.num_repetitions}, depth={cfg.depth}, outer_product=True), "
                               f"Binomial leaves (out_channels={cfg.num_leaves}, total_count={cfg.total_count})"))


def build_einet(cfg: Config) -> Built:
    """SPFlow's Einet with fused einsum (sum-of-outer-products) layers."""
    np.random.seed(cfg.seed)
    model = Einet([_leaf(cfg)], num_classes=1, num_sums=cfg.num_sums, num_leaves=cfg.num_leaves,
                  depth=cfg.depth, num_repetitions=cfg.num_repetitions, layer_type="einsum")
    return _built(model, cfg, (f"spflow Einet(num_classes=1, num_sums={cfg.num_sums}, "
                               f"num_leaves={cfg.num_leaves}, depth={cfg.depth}, "
                               f"num_repetitions={cfg.num_repetitions}, layer_type='einsum'), "
                               f"Binomial leaves (total_count={cfg.total_count})"))
