"""Benchmark adapter for the paper's own code, run with the peers' virtual environment.

Lang et al. 2022 ("Elevating Perceptual Sample Quality in Probabilistic Circuits through Differentiable
Sampling") published their code as ``ml-research/differentiable-sampling-pc``. It is not a package: its
root holds a fork of ``simple_einet``, which the worker imports from the checkout given to the driver as
``--dsp-path`` (``_worker.py --source``). Importing it needs ``numpy``, ``scipy``, ``tqdm``,
``fast_pytorch_kmeans`` (``einet.py``) and ``torchvision`` (imported, unused, by the Binomial leaf).

The model is the fork's ``Einet``, configured as the paper's experiments build it (``make_einet``):

* ``EinetConfig(num_features=H*W, num_channels=C, depth=D, num_sums=K, num_leaves=I,
  num_repetitions=R, num_classes=1, leaf_type=Binomial, leaf_kwargs={"total_count": 255}, dropout=0.0)``;
* per repetition a random partition of the variables into ``2**D`` leaf regions (``FactorizedLeaf``),
  einsum layers over the ``K x K`` (``I x I`` at the bottom) products of two children, one unit per tree at
  the top and an ``EinsumMixingLayer`` over the repetitions at the root: the same 1,280,810 trainable
  parameters as ours in the paper configuration. The fork also keeps 67,203 non-trainable
  ``nn.Parameter``s (integer index maps for sampling, a fixed sampling root, a marginalization constant);
  they are not counted.

Differentiable sampling is ``Einet.sample_differentiable(num_samples, hard, tau)``, top-down: the root draws
one ``torch.nn.functional.gumbel_softmax`` over the repetitions, and every layer below blends, for each region
position, the weight logits of its units by the selection arriving from above and those of the repetitions by
the root's selection, then draws one ``gumbel_softmax`` over the child pairs per sample and region position:
one draw per region, shared by the repetitions (whose partitions differ). The leaf layer blends the
repetitions' scope assignments and leaf draws the same way; it draws every component of every repetition
through a Normal approximation of the Binomial (not rounded, clipped to ``[0, total_count]``) and picks among
them by one-hot products. One-hot selections follow ancestral sampling; soft ones are a coarser
relaxation than ours (our per-region path draws per repetition and region). ``hard=False`` is the paper's
soft sampler, the peer of both our soft rows (per unit and per region); ``hard=True`` is its
straight-through variant (one-hot selections forward, soft gradients backward; leaves as above).
"""

from __future__ import annotations

from pathlib import Path

import simple_einet
import torch
from _common import (
    LOG_PROB,
    OBJECTIVE_STEPS,
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
from simple_einet.distributions.binomial import Binomial
from simple_einet.einet import Einet, EinetConfig

NO_OBJECTIVES = ("the paper's training scripts are not a library API; only pyro_spn's steps are timed, next to "
                 "its likelihood step")
# The folder the fork was imported from (the repository's root).
CHECKOUT = Path(simple_einet.__file__).resolve().parent.parent


def build(cfg: Config) -> Built:
    """The paper code's ``Einet`` with Binomial leaves, in the benchmark's configuration."""
    channels, height, width = cfg.image_shape
    config = EinetConfig(num_features=height * width, num_channels=channels, depth=cfg.depth,
                         num_sums=cfg.num_sums, num_leaves=cfg.num_leaves, num_repetitions=cfg.num_repetitions,
                         num_classes=1, leaf_type=Binomial, leaf_kwargs={"total_count": cfg.total_count},
                         dropout=0.0)
    model = Einet(config)
    params = [p for p in model.parameters() if p.requires_grad]
    x = random_data(cfg)
    n = cfg.batch

    def log_prob() -> None:
        with torch.no_grad():
            model(x)

    def sample() -> None:
        model.sample(num_samples=n)  # runs under torch.no_grad()

    soft = backward_of_linear_op(model, lambda: model.sample_differentiable(num_samples=n, hard=False, tau=TAU), cfg)
    return Built(
        num_params=sum(p.numel() for p in params),
        description=(f"paper's code (simple_einet fork): Einet(EinetConfig(num_features={height * width}, "
                     f"num_channels={channels}, depth={cfg.depth}, num_sums={cfg.num_sums}, "
                     f"num_leaves={cfg.num_leaves}, num_repetitions={cfg.num_repetitions}, num_classes=1, "
                     f"leaf_type=Binomial, leaf_kwargs={{'total_count': {cfg.total_count}}})), "
                     f"sample_differentiable(hard=False/True, tau={TAU}), one Gumbel-Softmax per region "
                     "(the same call in both soft rows)"),
        versions={"differentiable-sampling-pc": f"checkout at {CHECKOUT}", "torch": torch.__version__},
        ops={
            LOG_PROB: log_prob,
            TRAIN_STEP: train_step_op(params, lambda: -model(x).mean()),
            SAMPLE: sample,
            RSAMPLE_ST: backward_of_linear_op(
                model, lambda: model.sample_differentiable(num_samples=n, hard=True, tau=TAU), cfg),
            RSAMPLE_SOFT_UNIT: soft,
            RSAMPLE_SOFT_REGION: soft,
        },
        unsupported=dict.fromkeys(OBJECTIVE_STEPS, NO_OBJECTIVES),
    )
