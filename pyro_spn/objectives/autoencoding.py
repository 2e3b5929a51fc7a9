"""PAE: probabilistic auto-encoding with a circuit over the joint of the data and Gaussian latents."""

from __future__ import annotations

from typing import Protocol, cast, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import checks
from ..estimators import ESTIMATORS, Estimator, score_surrogate, with_rule
from ..expectations import Statistic, bernoulli_log_terms, moments
from .base import AutoEncoder, Objective

RECONSTRUCTIONS: tuple[str, ...] = ("bce", "mse")
_EPS = 1e-6  # BCE probabilities are clamped into [eps, 1 − eps]


@runtime_checkable
class TractableAutoEncoder(AutoEncoder, Protocol):
    """An :class:`~pyro_spn.objectives.base.AutoEncoder` whose decoder has an exact density and exact expectations,
    such as :class:`~pyro_spn.joint.MarginalSPNDistribution` (what the ``"score"`` and ``"exact"`` estimators use)."""

    def sample_given(self, extra: Tensor) -> Tensor:
        """Exact draws ``[N, *event_shape]`` given codes ``[N, E]``."""
        ...

    def decode_log_prob(self, x: Tensor, extra: Tensor) -> Tensor:
        """``log p(x | extra)`` ``[N]``."""
        ...

    def expected_given(self, extra: Tensor, statistic: Statistic) -> Tensor:
        """``E[h_k(x_d) | extra]`` ``[N, *event_shape, K]``."""
        ...


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

    The gradient of the expected error over the decoder's draw is estimated with ``estimator``:

    * ``"soft"`` (the paper's) or ``"straight_through"``: one relaxed draw per example;
    * ``"score"`` (unbiased): ``num_samples`` exact draws per example and the score function of the decoder's exact
      density ``log p(x̂ | z)`` (through the code ``z`` too), with the leave-one-out baseline over each example's
      draws;
    * ``"exact"`` (no sampling): the error is a sum over the data entries, so its expectation over the decoder is
      exact from the posterior flows given ``z``: the first and second moments for ``"mse"``, ``E log x̂`` and
      ``E log(1 − x̂)`` (finite-support leaves) for ``"bce"``.

    Args:
        reconstruction: ``"bce"`` (Binomial or Bernoulli data) or ``"mse"`` (real-valued data).
        scale: model-space data are divided by it before the reconstruction error (e.g. ``255``).
        estimator: ``"soft"``, ``"straight_through"``, ``"score"`` or ``"exact"`` (the last two need a
            :class:`TractableAutoEncoder`).
        num_samples: the score estimator's draws per example (``>= 2`` for its baseline).
    """

    name = "pae"

    def __init__(self, reconstruction: str = "bce", scale: float = 1.0, estimator: Estimator = "soft",
                 num_samples: int = 2) -> None:
        super().__init__()
        self.reconstruction = checks.choice("reconstruction", reconstruction, RECONSTRUCTIONS)
        self.scale = checks.positive("scale", scale)
        self.estimator = cast(Estimator, checks.choice("estimator", estimator, ESTIMATORS))
        self.num_samples = checks.integer("num_samples", num_samples)
        if estimator == "score" and self.num_samples < 2:
            raise ValueError(f"num_samples must be >= 2 for estimator 'score' (its leave-one-out baseline), "
                             f"got {num_samples}")

    def reconstruction_error(self, x_hat: Tensor, x: Tensor) -> Tensor:
        """Per example, summed over the data entries: ``[N, *event_shape]`` twice → ``[N]``."""
        x_hat, x = x_hat.reshape(x_hat.shape[0], -1) / self.scale, x.reshape(x.shape[0], -1) / self.scale
        if self.reconstruction == "mse":
            return (x_hat - x.to(x_hat.dtype)).pow(2).sum(1)
        probs = x_hat + (x_hat.clamp(_EPS, 1 - _EPS) - x_hat).detach()  # clamped, gradient passed through
        return F.binary_cross_entropy(probs, x.to(probs.dtype), reduction="none").sum(1)

    def expected_error(self, d: TractableAutoEncoder, extra: Tensor, x: Tensor) -> Tensor:
        """``E_{x̂ ~ p(·|extra)}[error(x̂, x)]`` per example, ``[N]``, exactly (see the class docstring)."""
        target = x.reshape(x.shape[0], -1)
        if self.reconstruction == "mse":
            stats = d.expected_given(extra, moments).reshape(x.shape[0], -1, 2)
            first, second = stats[..., 0], stats[..., 1]
            target = target.to(first.dtype)
            return (second - 2 * first * target + target.square()).sum(1) / self.scale**2
        stats = d.expected_given(extra, bernoulli_log_terms(self.scale, _EPS)).reshape(x.shape[0], -1, 2)
        y = target.to(stats.dtype) / self.scale
        return -(y * stats[..., 0] + (1 - y) * stats[..., 1]).sum(1)

    def _score_error(self, d: TractableAutoEncoder, extra: Tensor, x: Tensor) -> Tensor:
        """The score estimator's surrogate of the mean error (``num_samples`` exact draws per example)."""
        k = self.num_samples
        repeated = extra.repeat_interleave(k, dim=0)  # row n·k + j: example n, draw j
        with torch.no_grad():
            draws = d.sample_given(repeated.detach())
        errors = self.reconstruction_error(draws, x.repeat_interleave(k, dim=0)).view(-1, k)  # [N, k]
        return score_surrogate(errors, d.decode_log_prob(draws, repeated).view(-1, k))

    def loss(self, d: AutoEncoder, x: Tensor) -> Tensor:
        """The mean reconstruction error of ``d.decode(d.encode(x))`` for ``x [N, *event_shape]``, a scalar."""
        if not isinstance(d, AutoEncoder):
            raise TypeError(f"d must have encode and decode (e.g. JointSPN.distribution()), got {type(d).__name__}")
        if self.estimator in ("soft", "straight_through"):
            relaxed = cast(AutoEncoder, with_rule(d, self.estimator))
            return self.reconstruction_error(relaxed.decode(relaxed.encode(x)), x).mean()
        if not isinstance(d, TractableAutoEncoder):
            raise TypeError(f"d must have an exact decoder density and expectations for estimator "
                            f"{self.estimator!r} (e.g. JointSPN.distribution()), got {type(d).__name__}")
        extra = d.encode(x)
        if self.estimator == "exact":
            return self.expected_error(d, extra, x).mean()
        return self._score_error(d, extra, x)
