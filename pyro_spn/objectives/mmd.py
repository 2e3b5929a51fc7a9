"""MMD: maximum mean discrepancy with a sum of RBF kernels, fixed or adversarially learned (MMD-GAN)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import cast

import torch
from torch import Tensor, nn

from .. import checks
from ..estimators import ESTIMATORS, Estimator, critic_samples, rbf_mmd2, tractable, with_rule
from .base import Generative, Objective, frozen

BANDWIDTHS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)
#: Bandwidths at the data's scale, in units of the median pairwise distance (:func:`data_bandwidths`).
BANDWIDTH_FACTORS: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0)
#: The median pairwise distance is taken over at most this many points.
MEDIAN_POINTS = 1000


def median_distance(x: Tensor) -> float:
    """The median pairwise Euclidean distance of (at most the first :data:`MEDIAN_POINTS` of) ``x [N, *shape]``
    (``N >= 2``)."""
    points = x[:MEDIAN_POINTS].flatten(1).double()
    if len(points) < 2:
        raise ValueError(f"x: the median pairwise distance needs at least 2 points, got {len(points)}")
    distances = torch.cdist(points, points)
    return float(distances[torch.triu_indices(len(points), len(points), 1).unbind()].median())


def data_bandwidths(x: Tensor) -> tuple[float, ...]:
    """RBF bandwidths that resolve ``x``'s structure at its own scale: :data:`BANDWIDTH_FACTORS` times its
    :func:`median_distance` (fixed bandwidths of 1..16 only see the coarse shape of a set that spans a few units)."""
    median = median_distance(x)
    return tuple(factor * median for factor in BANDWIDTH_FACTORS)


def _check_bandwidths(bandwidths: Sequence[float]) -> tuple[float, ...]:
    if isinstance(bandwidths, str) or not isinstance(bandwidths, Sequence):
        raise TypeError(f"bandwidths must be a non-empty sequence of finite numbers > 0, got {bandwidths!r}")
    if not bandwidths:
        raise ValueError("bandwidths must be a non-empty sequence of finite numbers > 0, got an empty one")
    return tuple(checks.positive("bandwidths", s) for s in bandwidths)


def mmd2(x: Tensor, y: Tensor, bandwidths: Sequence[float] = BANDWIDTHS, unbiased: bool = True) -> Tensor:
    """The squared MMD between the samples ``x`` and ``y`` under ``k(a, b) = Σ_σ exp(−‖a − b‖² / (2σ²))``.

    With ``unbiased=True`` (the default) it is the unbiased estimate
    ``Σ_{i≠j} k(x_i, x_j) / (N(N−1)) + Σ_{i≠j} k(y_i, y_j) / (M(M−1)) − 2 Σ_{i,j} k(x_i, y_j) / (NM)``:
    zero in expectation when both samples come from the same distribution (a single estimate may be
    negative). With ``unbiased=False`` the diagonals are kept (the V-statistic, ``>= 0``, biased upward).

    Args:
        x: ``[N, *shape]``, flattened to ``[N, D]``; ``N >= 2`` if unbiased.
        y: ``[M, *shape]`` with ``prod(shape) == D``; ``M >= 2`` if unbiased.
        bandwidths: the kernels' ``σ``.
        unbiased: leave out the ``i == j`` terms of the within-sample sums.

    Returns:
        A scalar.
    """
    sigmas = _check_bandwidths(bandwidths)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor) or x.dim() < 1 or y.dim() < 1:
        raise ValueError("x and y must be tensors [N, *shape] and [M, *shape]")
    x, y = x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same number of entries per example, got {x.shape[1]} and {y.shape[1]}")
    least = 2 if unbiased else 1
    if x.shape[0] < least or y.shape[0] < least:
        raise ValueError(f"x and y need at least {least} examples each, got {x.shape[0]} and {y.shape[0]}")
    z = torch.cat([x, y])
    squared = z.pow(2).sum(1)
    distances = (squared[:, None] + squared[None, :] - 2 * z @ z.T).clamp_min(0)  # [N + M, N + M]
    gamma = torch.tensor([0.5 / s**2 for s in sigmas], dtype=z.dtype, device=z.device)
    kernel = torch.exp(-distances[..., None] * gamma).sum(-1)
    n, m = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = kernel[:n, :n], kernel[n:, n:], kernel[:n, n:]
    if unbiased:
        within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (n * (n - 1))
        within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    else:
        within_x, within_y = k_xx.mean(), k_yy.mean()
    return within_x + within_y - 2 * k_xy.mean()


def _kernel(a: Tensor, b: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """``Σ_σ exp(−‖a_i − b_j‖² / (2σ²))`` ``[N, M]`` for ``a [N, D]``, ``b [M, D]``."""
    squared = torch.cdist(a, b).square()
    return sum(torch.exp(-squared / (2 * s**2)) for s in bandwidths)  # type: ignore[return-value]


def mmd2_score(samples: Tensor, log_p: Tensor, x: Tensor, y: Tensor, bandwidths: Sequence[float]) -> Tensor:
    """The unbiased MMD² between exact samples ``x [n, D]`` (features of the model's samples) and data features
    ``y [m, D]``, with the score-function gradient of the model's part: the value is the U-statistic, the gradient
    ``mean_i (g_i − b_i) ∇ log p(x_i)`` with ``g_i = 2 mean_{j≠i} k(x_i, x_j) − 2 mean_y k(x_i, y)`` (so that
    ``E[g ∇ log p] = ∇ (E_{x,x'} k − 2 E_{x,y} k)``) and the baseline ``b_i``, the mean of ``g_j`` over ``j ≠ i``
    computed without ``x_i``: independent of ``x_i``, so the estimate stays unbiased.

    Args:
        samples: the model's exact samples ``[n, *event_shape]`` (only their number is used).
        log_p: ``log p`` of the samples ``[n]``, differentiable w.r.t. the circuit.
        x: their features ``[n, D]`` (``n >= 3``).
        y: the data's features ``[m, D]`` (``m >= 2``).
        bandwidths: the kernels' ``σ``.
    """
    n = samples.shape[0]
    if n < 3:
        raise ValueError(f"the score estimator of the MMD needs at least 3 samples, got {n}")
    value = mmd2(x, y, bandwidths)
    with torch.no_grad():
        k_xx = _kernel(x, x, bandwidths)
        k_xx.fill_diagonal_(0.0)
        rows = k_xx.sum(1)  # r_i = Σ_{j≠i} k(x_i, x_j)
        total = rows.sum()  # T = Σ_{i≠j} k(x_i, x_j)
        cross = _kernel(x, y, bandwidths).mean(1)  # c_i = mean_y k(x_i, y)
        g = 2 * rows / (n - 1) - 2 * cross
        baseline = (2 * (total - 2 * rows) / (n - 2) - 2 * (cross.sum() - cross)) / (n - 1)
    return value + ((g - baseline) * (log_p - log_p.detach())).mean()


class MMDObjective(Objective):
    """Minimizes the unbiased :func:`mmd2` between a data batch and as many differentiable samples.

    Without an encoder the kernel is fixed, on the data divided by ``scale``. With an encoder ``φ`` the
    kernel is ``k(φ(a), φ(b))``, learned adversarially as in MMD-GAN (Li et al. 2017):
    :meth:`auxiliary_step` makes ``encoder_steps`` Adam updates of ``φ`` that *maximize* the MMD between
    the real batch and fresh detached samples, and :meth:`loss` minimizes it w.r.t. the circuit with
    ``φ`` frozen. The encoder learning rate matters (the paper's grid search: MNIST ``0.01``,
    SVHN and CIFAR ``0.005``, CelebA ``0.001``).

    The loss's gradient w.r.t. the circuit is estimated with ``estimator``: ``"soft"`` (the paper's: the MMD of
    relaxed samples) or ``"straight_through"``; ``"score"`` (unbiased: exact samples and :func:`mmd2_score`); or
    ``"exact"`` (fixed kernel only: no sampling in the data term and no relaxation at all,
    :func:`~pyro_spn.estimators.rbf_mmd2`). The encoder trains on the samples of
    :func:`~pyro_spn.estimators.critic_samples`.

    Args:
        bandwidths: the RBF kernels' ``σ``.
        encoder: ``[N, *event_shape]`` → ``[N, D]`` on normalized data, e.g.
            :func:`pyro_spn.nets.make_encoder`; ``None`` for the fixed kernel.
        encoder_lr: the encoder's Adam learning rate (only with an encoder).
        encoder_steps: encoder updates per :meth:`auxiliary_step` (only with an encoder).
        scale: model-space data are divided by it before the kernel or the encoder (e.g. ``255``).
        estimator: ``"soft"``, ``"straight_through"``, ``"score"`` or ``"exact"`` (see above).
    """

    name = "mmd"

    def __init__(self, bandwidths: Sequence[float] = BANDWIDTHS, encoder: nn.Module | None = None,
                 encoder_lr: float = 5e-3, encoder_steps: int = 1, scale: float = 1.0,
                 estimator: Estimator = "soft") -> None:
        super().__init__()
        self.estimator = cast(Estimator, checks.choice("estimator", estimator, ESTIMATORS))
        if estimator == "exact" and encoder is not None:
            raise ValueError("estimator 'exact' needs the fixed kernel (encoder=None): a learned kernel does not "
                             "factorize over the variables")
        self.bandwidths = _check_bandwidths(bandwidths)
        self.scale = checks.positive("scale", scale)
        self.encoder_steps = checks.integer("encoder_steps", encoder_steps)
        encoder_lr = checks.positive("encoder_lr", encoder_lr)
        self.encoder = None if encoder is None else checks.trainable_module("encoder", encoder)
        if self.encoder is not None:
            self.optimizer = torch.optim.Adam(self.encoder.parameters(), lr=encoder_lr)

    def features(self, x: Tensor) -> Tensor:
        """What the kernel compares: ``φ(x / scale)`` ``[N, D]``, or ``x / scale`` without an encoder."""
        x = x / self.scale
        return x if self.encoder is None else self.encoder(x)

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """The unbiased MMD² between model-space batches ``x`` and ``y`` under this objective's kernel."""
        return mmd2(self.features(x), self.features(y), self.bandwidths)

    def auxiliary_step(self, d: Generative, x: Tensor) -> dict[str, float]:
        """``encoder_steps`` encoder updates maximizing the MMD (none for the fixed kernel); returns the
        MMD² before the last update."""
        optimizer = self.optimizer
        if self.encoder is None or optimizer is None:
            return {}
        for _ in range(self.encoder_steps):
            fake = critic_samples(d, x.shape[0], self.estimator).to(x.dtype)
            distance = self.distance(x, fake)
            optimizer.zero_grad(set_to_none=True)
            (-distance).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no gradients left behind on the net
        return {"encoder_mmd2": float(distance.detach())}

    def loss(self, d: Generative, x: Tensor) -> Tensor:
        """MMD² between ``x [N, *event_shape]`` and the model (``N`` samples where it samples), a scalar."""
        n = x.shape[0]
        if self.estimator == "exact":
            return rbf_mmd2(tractable(d, self.estimator), x, tuple(s * self.scale for s in self.bandwidths), n)
        with nullcontext() if self.encoder is None else frozen(self.encoder):
            if self.estimator == "score":
                exact = tractable(d, self.estimator)
                with torch.no_grad():
                    samples = exact.sample((n,))
                return mmd2_score(samples, exact.log_prob(samples), self.features(samples), self.features(x),
                                  self.bandwidths)
            fake = cast(Generative, with_rule(d, self.estimator)).rsample((n,))
            return self.distance(x, fake)
