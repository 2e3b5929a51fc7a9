"""ADV: the non-saturating GAN objective with the circuit as generator."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from ..estimators import ESTIMATORS, Estimator, critic_samples, expectation
from .base import Generative, Objective, frozen


class AdversarialObjective(Objective):
    """Adversarial training (Goodfellow et al. 2014), non-saturating form.

    The generator is the circuit; the discriminator ``D`` maps normalized data ``[N, *event_shape]`` to logits
    ``[N]``. Model-space data and samples are divided by ``scale`` before ``D`` sees them.

    * :meth:`auxiliary_step`: ``discriminator_steps`` Adam updates of ``D`` on
      ``softplus(−D(x)) + softplus(D(fake))`` (``−log D(x) − log(1 − D(fake))``), each on the same real
      batch and a fresh, detached batch of samples of the same size: the soft samples the circuit is trained through
      for ``estimator="soft"``, exact samples otherwise (:func:`~pyro_spn.estimators.critic_samples`).
    * :meth:`loss`: the generator loss ``E softplus(−D(fake)) = −E log D(fake)``, with ``D``'s parameters frozen
      (gradients reach the circuit only), estimated by :func:`~pyro_spn.estimators.expectation` with ``estimator``.

    Args:
        discriminator: ``[N, *event_shape]`` → ``[N]``, e.g. :func:`pyro_spn.nets.make_discriminator`.
        lr: the discriminator's Adam learning rate.
        betas: the discriminator's Adam betas.
        discriminator_steps: discriminator updates per :meth:`auxiliary_step` (per generator step).
        scale: model-space data are divided by it (e.g. ``255`` for 8-bit Binomial counts).
        estimator: how the generator loss's gradient is estimated: ``"soft"`` (the paper's), ``"straight_through"``
            or ``"score"`` (unbiased; see :mod:`pyro_spn.estimators`). A GAN generator takes ``"soft"`` (its own
            reparameterized samples).
    """

    name = "adv"
    optimizer: torch.optim.Optimizer

    def __init__(self, discriminator: nn.Module, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 discriminator_steps: int = 1, scale: float = 1.0, estimator: Estimator = "soft") -> None:
        super().__init__()
        self.estimator = cast(Estimator, checks.choice("estimator", estimator, ESTIMATORS[:3]))
        self.discriminator = checks.trainable_module("discriminator", discriminator)
        self.discriminator_steps = checks.integer("discriminator_steps", discriminator_steps)
        self.scale = checks.positive("scale", scale)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=checks.positive("lr", lr),
                                          betas=checks.betas("betas", betas))

    def logits(self, x: Tensor) -> Tensor:
        """The discriminator's logits ``[N]`` of model-space data ``x [N, *event_shape]``."""
        return self.discriminator(x / self.scale)

    def auxiliary_step(self, d: Generative, x: Tensor) -> dict[str, float]:
        """``discriminator_steps`` discriminator updates; returns the last update's loss and mean
        probabilities ``D(real)``, ``D(fake)`` (before that update)."""
        n = x.shape[0]
        for _ in range(self.discriminator_steps):
            fake = critic_samples(d, n, self.estimator).to(x.dtype)
            logits = self.logits(torch.cat([x, fake]))
            loss = F.softplus(-logits[:n]).mean() + F.softplus(logits[n:]).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # no gradients left behind on the net
        probs = torch.sigmoid(logits.detach())
        return {"discriminator_loss": float(loss.detach()), "d_real": float(probs[:n].mean()),
                "d_fake": float(probs[n:].mean())}

    def loss(self, d: Generative, x: Tensor) -> Tensor:
        """The generator loss on ``x.shape[0]`` samples (``x`` sets only the batch size)."""
        with frozen(self.discriminator):
            return expectation(d, lambda fake: F.softplus(-self.logits(fake)), x.shape[0], self.estimator)
