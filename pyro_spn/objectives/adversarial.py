"""ADV: the non-saturating GAN objective with the circuit as generator."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import checks
from .base import Generative, Objective, frozen


class AdversarialObjective(Objective):
    """Adversarial training (Goodfellow et al. 2014), non-saturating form.

    The generator is the circuit's differentiable sampler ``d.rsample`` (pass ``hard=False`` for the
    paper's soft samples); the discriminator ``D`` maps normalized data ``[N, *event_shape]`` to logits
    ``[N]``. Model-space data and samples are divided by ``scale`` before ``D`` sees them.

    * :meth:`auxiliary_step`: ``discriminator_steps`` Adam updates of ``D`` on
      ``softplus(−D(x)) + softplus(D(fake))`` (``−log D(x) − log(1 − D(fake))``), each on the same real
      batch and a fresh, detached batch of samples of the same size.
    * :meth:`loss`: the generator loss ``mean softplus(−D(fake)) = −mean log D(fake)``, with ``D``'s
      parameters frozen (gradients reach the circuit only).

    Args:
        discriminator: ``[N, *event_shape]`` → ``[N]``, e.g. :func:`pyro_spn.nets.make_discriminator`.
        lr: the discriminator's Adam learning rate.
        betas: the discriminator's Adam betas.
        discriminator_steps: discriminator updates per :meth:`auxiliary_step` (per generator step).
        scale: model-space data are divided by it (e.g. ``255`` for 8-bit Binomial counts).
    """

    name = "adv"
    optimizer: torch.optim.Optimizer

    def __init__(self, discriminator: nn.Module, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 discriminator_steps: int = 1, scale: float = 1.0) -> None:
        super().__init__()
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
            with torch.no_grad():
                fake = d.rsample((n,)).to(x.dtype)
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
        """The generator loss on ``x.shape[0]`` differentiable samples (``x`` sets only the batch size)."""
        fake = d.rsample((x.shape[0],))
        with frozen(self.discriminator):
            return F.softplus(-self.logits(fake)).mean()
