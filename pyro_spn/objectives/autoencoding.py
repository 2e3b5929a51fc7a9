"""PAE: probabilistic auto-encoding with a circuit over the joint of the data and Gaussian latents."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .. import checks
from .base import AutoEncoder, Objective

RECONSTRUCTIONS: tuple[str, ...] = ("bce", "mse")
_EPS = 1e-6  # BCE probabilities are clamped into [eps, 1 − eps]


class AutoEncodingObjective(Objective):
    """Probabilistic auto-encoding (the paper's §4.1.3) over any :class:`~pyro_spn.objectives.base.AutoEncoder`,
    such as the data's marginal of a circuit over data and Gaussian latents
    (:class:`~pyro_spn.joint.JointSPN` with ``Normal`` extras, :meth:`~pyro_spn.joint.JointSPN.distribution`):

    * encode: ``z = d.encode(x)``, for a circuit the max-product completion of the latents given the data
      (differentiable w.r.t. the selected Gaussian leaves' locations);
    * decode: ``x̂ = d.decode(z)``, for a circuit a differentiable conditional sample (relaxed for ``hard=False``);
    * loss: the reconstruction error of ``x̂``, summed over the data entries and averaged over the batch: binary
      cross-entropy between ``x̂ / scale`` and ``x / scale`` (pixels in ``[0, 1]``: ``scale`` is the Binomial
      ``total_count``, 1 for Bernoulli data), or the squared error of ``(x̂ − x) / scale`` for real-valued data.

    Args:
        reconstruction: ``"bce"`` (Binomial or Bernoulli data) or ``"mse"`` (real-valued data).
        scale: model-space data are divided by it before the reconstruction error (e.g. ``255``).
    """

    name = "pae"

    def __init__(self, reconstruction: str = "bce", scale: float = 1.0) -> None:
        super().__init__()
        self.reconstruction = checks.choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.scale = checks.positive("scale", scale)

    def reconstruction_error(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Per example, summed over the data entries: ``[N, *event_shape]`` twice → ``[N]``."""
        x_hat, x = x_hat.reshape(x_hat.shape[0], -1) / self.scale, x.reshape(x.shape[0], -1) / self.scale
        if self.reconstruction == "mse":
            return (x_hat - x.to(x_hat.dtype)).pow(2).sum(1)
        probs = x_hat + (x_hat.clamp(_EPS, 1 - _EPS) - x_hat).detach()  # clamped, gradient passed through
        return F.binary_cross_entropy(probs, x.to(probs.dtype), reduction="none").sum(1)

    def loss(self, d: AutoEncoder, x: Tensor) -> Tensor:
        """The mean reconstruction error of ``d.decode(d.encode(x))`` for ``x [N, *event_shape]``, a scalar."""
        if not isinstance(d, AutoEncoder):
            raise TypeError(f"d must have encode and decode (e.g. JointSPN.distribution()), got {type(d).__name__}")
        return self.reconstruction_error(d.decode(d.encode(x)), x).mean()
