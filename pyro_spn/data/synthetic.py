"""The six synthetic 2-D data sets of the paper (§5.1), drawn reproducibly from a seed.

Four are Gaussian mixtures with an exact density (:class:`GaussianMixture2D`): ``2-clusters`` (two isotropic
clusters), ``varied`` (three overlapping isotropic clusters with stds 1, 2.5, 0.5), ``aniso`` (three clusters
with a shared full covariance, i.e. isotropic blobs under a linear map) and ``9-clusters`` (a 3 × 3 grid of
equal isotropic clusters). ``2-moons`` and ``2-circles`` are scikit-learn's ``make_moons`` (noise 0.1) and
``make_circles`` (noise 0.05, factor 0.5); they have no closed-form density.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from sklearn.datasets import make_circles, make_moons
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

SYNTHETIC_DATASETS: tuple[str, ...] = ("2-clusters", "varied", "aniso", "9-clusters", "2-moons", "2-circles")


@dataclass(frozen=True)
class GaussianMixture2D:
    """A mixture of ``K`` bivariate Gaussians, stored in float64.

    Attributes:
        weights: ``[K]`` mixture weights, summing to 1.
        means: ``[K, 2]`` component means.
        covariances: ``[K, 2, 2]`` component covariance matrices (symmetric positive definite).
    """

    weights: Tensor
    means: Tensor
    covariances: Tensor

    @property
    def scales(self) -> Tensor:
        """``[K]`` the std along each component's major axis (the isotropic std for isotropic components)."""
        return torch.linalg.eigvalsh(self.covariances)[:, -1].sqrt()

    def log_prob(self, points: Tensor) -> Tensor:
        """Exact mixture log-density of raw points ``[M, 2]`` → ``[M]`` (computed in float64, returned in the
        points' floating dtype)."""
        if not isinstance(points, Tensor) or points.dim() != 2 or points.shape[1] != 2:
            shape = tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__
            raise ValueError(f"points must be a tensor of shape [M, 2], got {shape}")
        mixture = MixtureSameFamily(
            Categorical(probs=self.weights), MultivariateNormal(self.means, covariance_matrix=self.covariances)
        )
        dtype = points.dtype if points.is_floating_point() else torch.get_default_dtype()
        return mixture.log_prob(points.detach().cpu().to(torch.float64)).to(dtype=dtype, device=points.device)

    def sample(self, num_samples: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``num_samples`` i.i.d. draws: points ``[num_samples, 2]`` float64 and components ``[num_samples]`` long."""
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        noise = torch.randn(num_samples, 2, 1, generator=generator, dtype=torch.float64)
        cholesky = torch.linalg.cholesky(self.covariances)
        points = self.means[components] + (cholesky[components] @ noise).squeeze(-1)
        return points, components


def _isotropic(means: list[list[float]], stds: list[float]) -> GaussianMixture2D:
    """Equal-weight mixture of isotropic Gaussians with the given means ``[K, 2]`` and stds ``[K]``."""
    std = torch.tensor(stds, dtype=torch.float64)
    covariances = std.square()[:, None, None] * torch.eye(2, dtype=torch.float64)
    return GaussianMixture2D(torch.full((len(stds),), 1.0 / len(stds), dtype=torch.float64),
                             torch.tensor(means, dtype=torch.float64), covariances)


def _anisotropic(means: list[list[float]], matrix: list[list[float]]) -> GaussianMixture2D:
    """Equal-weight mixture of unit-variance blobs mapped by ``x ↦ x @ A`` around the given means ``[K, 2]``:
    every component has the covariance ``A^T A`` (scikit-learn's anisotropic-blobs example)."""
    a = torch.tensor(matrix, dtype=torch.float64)
    k = len(means)
    return GaussianMixture2D(torch.full((k,), 1.0 / k, dtype=torch.float64), torch.tensor(means, dtype=torch.float64),
                             (a.T @ a).expand(k, 2, 2).clone())


MIXTURES: dict[str, GaussianMixture2D] = {
    "2-clusters": _isotropic([[-2.5, 0.0], [2.5, 0.0]], [1.0, 1.0]),
    "varied": _isotropic([[-3.0, 2.0], [1.0, -1.0], [4.0, 3.0]], [1.0, 2.5, 0.5]),
    "aniso": _anisotropic([[-2.0, 2.0], [0.0, -2.0], [3.0, 1.5]], [[0.6, -0.6], [-0.4, 0.8]]),
    "9-clusters": _isotropic([[x, y] for x in (-3.0, 0.0, 3.0) for y in (-3.0, 0.0, 3.0)], [0.5] * 9),
}
"""The Gaussian-mixture sets: their exact generating distributions."""


def sample_synthetic(name: str, num_samples: int, seed: int) -> tuple[Tensor, Tensor, GaussianMixture2D | None]:
    """Draws a synthetic set.

    Returns:
        points ``[num_samples, 2]`` float32 (in random order), labels ``[num_samples]`` long (mixture component,
        moon or circle index) and the generating mixture (``None`` for ``2-moons`` and ``2-circles``).
    """
    if name in MIXTURES:
        mixture = MIXTURES[name]
        points, labels = mixture.sample(num_samples, torch.Generator().manual_seed(seed))
        return points.to(torch.float32), labels, mixture
    if name == "2-moons":
        x, y = make_moons(num_samples, shuffle=True, noise=0.1, random_state=seed)
    elif name == "2-circles":
        x, y = make_circles(num_samples, shuffle=True, noise=0.05, factor=0.5, random_state=seed)
    else:
        raise ValueError(f"name must be one of {SYNTHETIC_DATASETS}, got {name!r}")
    return torch.from_numpy(x).to(torch.float32), torch.from_numpy(y).to(torch.long), None
