"""MMD: maximum mean discrepancy with a sum of RBF kernels, fixed or adversarially learned (MMD-GAN)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .. import checks
from .base import Generative, Objective, frozen

BANDWIDTHS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0)


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


class MMDObjective(Objective):
    """Minimizes the unbiased :func:`mmd2` between a data batch and as many differentiable samples.

    Without an encoder the kernel is fixed, on the data divided by ``scale``. With an encoder ``φ`` the
    kernel is ``k(φ(a), φ(b))``, learned adversarially as in MMD-GAN (Li et al. 2017):
    :meth:`auxiliary_step` makes ``encoder_steps`` Adam updates of ``φ`` that *maximize* the MMD between
    the real batch and fresh detached samples, and :meth:`loss` minimizes it w.r.t. the circuit with
    ``φ`` frozen. The encoder learning rate matters (the paper's grid search: MNIST ``0.01``,
    SVHN and CIFAR ``0.005``, CelebA ``0.001``).

    Args:
        bandwidths: the RBF kernels' ``σ``.
        encoder: ``[N, *event_shape]`` → ``[N, D]`` on normalized data, e.g.
            :func:`pyro_spn.nets.make_encoder`; ``None`` for the fixed kernel.
        encoder_lr: the encoder's Adam learning rate (only with an encoder).
        encoder_steps: encoder updates per :meth:`auxiliary_step` (only with an encoder).
        scale: model-space data are divided by it before the kernel or the encoder (e.g. ``255``).
    """

    name = "mmd"

    def __init__(self, bandwidths: Sequence[float] = BANDWIDTHS, encoder: nn.Module | None = None,
                 encoder_lr: float = 5e-3, encoder_steps: int = 1, scale: float = 1.0) -> None:
        super().__init__()
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
            with torch.no_grad():
                fake = d.rsample((x.shape[0],)).to(x.dtype)
            distance = self.distance(x, fake)
            optimizer.zero_grad(set_to_none=True)
            (-distance).backward()
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)  # no gradients left behind on the net
        return {"encoder_mmd2": float(distance.detach())}

    def loss(self, d: Generative, x: Tensor) -> Tensor:
        """MMD² between ``x [N, *event_shape]`` and ``N`` differentiable samples, a scalar."""
        fake = d.rsample((x.shape[0],))
        with nullcontext() if self.encoder is None else frozen(self.encoder):
            return self.distance(x, fake)
