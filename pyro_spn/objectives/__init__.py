"""Training objectives: plain losses over a model (a distribution, or any model with the methods a loss uses) and
a data batch.

=========  ============================================================================================
``ll``     :class:`LikelihoodObjective`, ``−mean log p(x)`` (also :func:`likelihood_model` for Pyro SVI)
``adv``    :class:`AdversarialObjective`, non-saturating GAN with the model's sampler as generator
``mmd``    :class:`MMDObjective`, MMD² with RBF kernels, fixed or adversarially learned (MMD-GAN)
``pae``    :class:`AutoEncodingObjective`, auto-encoding through a model's encoder and decoder
=========  ============================================================================================

:class:`HybridObjective` adds a weighted negative log-likelihood to any of them; :class:`ELBOObjective` trains
latent-variable baselines (the VAE) through their evidence lower bound.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

from torch import nn

from ..estimators import Estimator
from ..nets import make_discriminator, make_encoder
from .adversarial import AdversarialObjective
from .autoencoding import RECONSTRUCTIONS, AutoEncodingObjective
from .base import AutoEncoder, Density, EvidenceBound, Generative, Objective
from .hybrid import HybridObjective
from .likelihood import ELBOObjective, LikelihoodObjective, likelihood_model
from .mmd import BANDWIDTH_FACTORS, BANDWIDTHS, MMDObjective, data_bandwidths, median_distance, mmd2

__all__ = ["BANDWIDTHS", "BANDWIDTH_FACTORS", "KERNELS", "OBJECTIVES", "RECONSTRUCTIONS", "AdversarialObjective",
           "AutoEncoder", "AutoEncodingObjective", "Density", "ELBOObjective", "EvidenceBound", "Generative",
           "HybridObjective", "LikelihoodObjective", "MMDObjective", "Objective", "data_bandwidths", "likelihood_model",
           "make_objective", "median_distance", "mmd2"]

KERNELS: tuple[str, ...] = ("fixed", "learned")


def _ll(event_shape: Sequence[int]) -> Objective:
    return LikelihoodObjective()


def _adv(event_shape: Sequence[int], discriminator: nn.Module | None = None, lr: float = 2e-4,
         betas: tuple[float, float] = (0.5, 0.999), discriminator_steps: int = 1, scale: float = 1.0,
         estimator: Estimator = "soft") -> Objective:
    discriminator = make_discriminator(event_shape) if discriminator is None else discriminator
    return AdversarialObjective(discriminator, lr=lr, betas=betas, discriminator_steps=discriminator_steps,
                                scale=scale, estimator=estimator)


def _mmd(event_shape: Sequence[int], kernel: str = "fixed", bandwidths: Sequence[float] = BANDWIDTHS,
         encoder_features: int = 16, encoder_lr: float = 5e-3, encoder_steps: int = 1,
         scale: float = 1.0, estimator: Estimator = "soft") -> Objective:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)}; got {kernel!r}")
    encoder = make_encoder(event_shape, encoder_features) if kernel == "learned" else None
    return MMDObjective(bandwidths, encoder=encoder, encoder_lr=encoder_lr, encoder_steps=encoder_steps,
                        scale=scale, estimator=estimator)


def _pae(event_shape: Sequence[int], reconstruction: str = "bce", scale: float = 1.0, estimator: Estimator = "soft",
         num_samples: int = 2) -> Objective:
    return AutoEncodingObjective(reconstruction=reconstruction, scale=scale, estimator=estimator,
                                 num_samples=num_samples)


_FACTORIES: dict[str, Callable[..., Objective]] = {"ll": _ll, "adv": _adv, "mmd": _mmd, "pae": _pae}
#: The objectives' names.
OBJECTIVES: tuple[str, ...] = tuple(_FACTORIES)


def make_objective(name: str, *, event_shape: int | Sequence[int], nll_weight: float = 0.0,
                   **options: object) -> Objective:
    """An objective by name, for data of ``event_shape``.

    Options per name (all optional):

    * ``"ll"``: none.
    * ``"adv"``: ``discriminator`` (default :func:`~pyro_spn.nets.make_discriminator`), ``lr``,
      ``betas``, ``discriminator_steps``, ``scale``, ``estimator`` (see :class:`AdversarialObjective`).
    * ``"mmd"``: ``kernel`` (``"fixed"`` or ``"learned"``: an encoder from
      :func:`~pyro_spn.nets.make_encoder` with ``encoder_features`` outputs), ``bandwidths``,
      ``encoder_features``, ``encoder_lr``, ``encoder_steps``, ``scale``, ``estimator`` (see
      :class:`MMDObjective`).
    * ``"pae"``: ``reconstruction``, ``scale``, ``estimator``, ``num_samples`` (see :class:`AutoEncodingObjective`;
      the latents are the model's, e.g. :class:`~pyro_spn.joint.JointSPN`).

    ``estimator`` chooses how the gradient through the model's samples is estimated (:mod:`pyro_spn.estimators`):
    ``"soft"`` (the paper's relaxation, default), ``"straight_through"``, ``"score"`` (unbiased) or ``"exact"``
    (MMD with the fixed kernel, PAE).

    ``nll_weight > 0`` wraps a sample-based objective in :class:`HybridObjective`.

    Raises:
        ValueError: for an unknown ``name``; TypeError for an option ``name`` does not take.
    """
    if name not in _FACTORIES:
        raise ValueError(f"name must be one of {', '.join(OBJECTIVES)}; got {name!r}")
    factory = _FACTORIES[name]
    accepted = [p for p in inspect.signature(factory).parameters if p != "event_shape"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"make_objective({name!r}): unknown option(s) {unknown}; accepted: {accepted}")
    objective = factory(event_shape, **options)
    if nll_weight == 0:
        return objective
    if name == "ll":
        raise ValueError("nll_weight must be 0 for the 'll' objective (it is the negative log-likelihood already)")
    return HybridObjective(objective, nll_weight)
