"""PAE: probabilistic auto-encoding with a circuit over the joint of the data and Gaussian latents."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..distribution import SPNDistribution
from ..leaves import Leaf, Mixed, Normal
from ..nets._checks import event_shape_of, positive_int
from ..spn import RatSPN
from .base import Objective, positive

RECONSTRUCTIONS: tuple[str, ...] = ("bce", "mse")
_EPS = 1e-6  # BCE probabilities are clamped into [eps, 1 − eps]


def build_joint_spn(data_event_shape: int | Sequence[int], latent_dim: int, data_leaf: Leaf, *, depth: int,
                    num_repetitions: int, num_sums: int, num_leaves: int, seed: int = 0) -> RatSPN:
    """A circuit over the flat joint ``(x, z)``, event shape ``(F_x + latent_dim,)`` with
    ``F_x = prod(data_event_shape)``: ``data_leaf`` over the first ``F_x`` variables (the flattened data),
    Gaussian leaves over the last ``latent_dim`` (the latents)."""
    num_data = math.prod(event_shape_of(data_event_shape))
    latent_dim = positive_int("latent_dim", latent_dim)
    leaf = Mixed([(data_leaf, num_data), (Normal(), latent_dim)])
    return RatSPN((num_data + latent_dim,), depth=depth, num_repetitions=num_repetitions, num_sums=num_sums,
                  num_leaves=num_leaves, leaf=leaf, seed=seed)


class AutoEncodingObjective(Objective):
    """Probabilistic auto-encoding (the paper's §4.1.3) with a circuit ``S(x, z)`` from :func:`build_joint_spn`.

    * encode: ``z = argmax_z S(z | x)``, the MPE of the latents given the data (differentiable w.r.t.
      the selected Gaussian leaves' locations);
    * decode: ``x̂ ~ S(x | z)``, a differentiable conditional sample (relaxed for ``hard=False``);
    * loss: the reconstruction error of ``x̂``, summed over the data entries and averaged over the batch:
      binary cross-entropy between ``x̂ / scale`` and ``x / scale`` (pixels in ``[0, 1]``: ``scale`` is
      the Binomial ``total_count``, 1 for Bernoulli data), or the squared error of ``(x̂ − x) / scale``
      for real-valued data.

    The distribution ``d`` the methods take is over the joint (event shape ``(F_x + latent_dim,)``);
    data ``x`` and samples have the data's shape ``[N, *data_event_shape]``.

    Args:
        data_event_shape: the data's shape, ``(F,)`` or ``(C, H, W)``.
        latent_dim: the number of latent variables.
        reconstruction: ``"bce"`` (Binomial or Bernoulli data) or ``"mse"`` (real-valued data).
        scale: model-space data are divided by it before the reconstruction error (e.g. ``255``).
    """

    name = "pae"

    def __init__(self, data_event_shape: int | Sequence[int], latent_dim: int, reconstruction: str = "bce",
                 scale: float = 1.0) -> None:
        super().__init__()
        self.data_event_shape = event_shape_of(data_event_shape)
        self.latent_dim = positive_int("latent_dim", latent_dim)
        if reconstruction not in RECONSTRUCTIONS:
            raise ValueError(f"reconstruction must be one of {RECONSTRUCTIONS}, got {reconstruction!r}")
        self.reconstruction = reconstruction
        self.scale = positive("scale", scale)
        self.num_data = math.prod(self.data_event_shape)

    # -- the joint layout -----------------------------------------------------------------------------
    def join(self, d: SPNDistribution, x: Tensor | None, z: Tensor | None) -> Tensor:
        """The joint ``[N, F_x + latent_dim]`` of ``x [N, *data_event_shape]`` and ``z [N, latent_dim]``;
        a part given as ``None`` is missing (NaN). At least one part must be given."""
        if tuple(d.event_shape) != (self.num_data + self.latent_dim,):
            raise ValueError(f"d: expected a distribution over the joint, event_shape "
                             f"({self.num_data + self.latent_dim},), got {tuple(d.event_shape)}")
        if x is not None and tuple(x.shape[1:]) != self.data_event_shape:
            raise ValueError(f"x: expected shape [N, {', '.join(map(str, self.data_event_shape))}], "
                             f"got {tuple(x.shape)}")
        if z is not None and (z.dim() != 2 or z.shape[1] != self.latent_dim):
            raise ValueError(f"z: expected shape [N, {self.latent_dim}], got {tuple(z.shape)}")
        like = x if x is not None else z
        nan = like.new_full((like.shape[0], 1), math.nan, dtype=torch.get_default_dtype())
        x = nan.expand(-1, self.num_data) if x is None else x.reshape(x.shape[0], -1).to(nan.dtype)
        z = nan.expand(-1, self.latent_dim) if z is None else z.to(nan.dtype)
        return torch.cat([x, z], dim=1)

    def split(self, joint: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, F_x + latent_dim]`` → ``(x [N, *data_event_shape], z [N, latent_dim])``."""
        return joint[:, : self.num_data].reshape((-1,) + self.data_event_shape), joint[:, self.num_data:]

    # -- encoder, decoder ---------------------------------------------------------------------------
    def encode(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """``z = argmax_z S(z | x)``: ``x [N, *data_event_shape]`` → ``[N, latent_dim]``."""
        return self.split(d.mpe(self.join(d, x, None)))[1]

    def decode(self, d: SPNDistribution, z: Tensor) -> Tensor:
        """``x̂ ~ S(x | z)`` with ``d``'s differentiable sampler: ``z [N, latent_dim]`` → ``[N, *data_event_shape]``."""
        return self.split(d.condition(self.join(d, None, z)).rsample())[0]

    def reconstruct(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """``decode(encode(x))``, ``[N, *data_event_shape]``: what :meth:`loss` scores (exact conditional
        draws with straight-through gradients for ``hard=True``, relaxed ones for ``hard=False``)."""
        return self.decode(d, self.encode(d, x))

    def reconstruction_error(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Per example, summed over the data entries: ``[N, *data_event_shape]`` twice → ``[N]``."""
        x_hat, x = x_hat.reshape(x_hat.shape[0], -1) / self.scale, x.reshape(x.shape[0], -1) / self.scale
        if self.reconstruction == "mse":
            return (x_hat - x.to(x_hat.dtype)).pow(2).sum(1)
        probs = x_hat + (x_hat.clamp(_EPS, 1 - _EPS) - x_hat).detach()  # clamped, gradient passed through
        return F.binary_cross_entropy(probs, x.to(probs.dtype), reduction="none").sum(1)

    # -- the objective --------------------------------------------------------------------------------
    def loss(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """The mean reconstruction error of ``x [N, *data_event_shape]``, a scalar."""
        return self.reconstruction_error(self.reconstruct(d, x), x).mean()

    def log_likelihood(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]``, the latents marginalized."""
        return d.log_prob(self.join(d, x, None))

    def sample(self, d: SPNDistribution, n: int) -> Tensor:
        """``n`` exact draws of the data part of the joint, ``[n, *data_event_shape]``."""
        return self.split(d.sample((n,)))[0]

    def build_spn(self, event_shape: int | Sequence[int], leaf: Leaf, *, depth: int, num_repetitions: int,
                  num_sums: int, num_leaves: int, seed: int = 0) -> RatSPN:
        """:func:`build_joint_spn` with this objective's latents; ``event_shape`` is the data's shape."""
        if event_shape_of(event_shape) != self.data_event_shape:
            raise ValueError(f"event_shape must be this objective's data_event_shape {self.data_event_shape}, "
                             f"got {event_shape!r}")
        return build_joint_spn(self.data_event_shape, self.latent_dim, leaf, depth=depth,
                               num_repetitions=num_repetitions, num_sums=num_sums, num_leaves=num_leaves,
                               seed=seed)
