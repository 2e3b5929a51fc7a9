"""Neural baselines with a circuit's sampling interface: a VAE and GAN generators (DCGAN-style for images).

Each baseline exposes what the objectives and the trainer use of an :class:`~pyro_spn.SPNDistribution`:
``event_shape``, ``rsample(sample_shape)`` (differentiable samples ``[*sample_shape, *event_shape]``),
``sample(sample_shape)`` (no gradient) and, for the VAE only, ``log_prob(x)``. So the adversarial and
MMD objectives train a :class:`Generator` unchanged (a GAN and an MMD-GAN). Everything is in *model
space*, as for a circuit with the same leaves:

=============  =====================================================================================
``binomial``   counts ``0..total_count``: ``rsample`` gives ``total_count · sigmoid(·)``, ``sample`` integers
``normal``     real values (the 2-D sets are standardized)
``bernoulli``  ``{0, 1}``: ``rsample`` gives ``sigmoid(·)``, ``sample`` zeros and ones
=============  =====================================================================================

The data's leaf family (a :mod:`pyro_spn.leaves` spec: ``Binomial``, ``Normal`` or ``Bernoulli``) sets the
likelihood and the map into model space. ``with_budget`` picks the width of a baseline so that its parameter count
is within 10 % of a budget (in training: the parameter count of the circuit the same config builds).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Binomial, Distribution, Normal

from .. import checks, leaves

#: The leaf families a baseline can model.
FAMILIES: tuple[type[leaves.Leaf], ...] = (leaves.Binomial, leaves.Normal, leaves.Bernoulli)
BUDGET_TOLERANCE = 0.1  # with_budget: |parameters − budget| <= 10 % of the budget
MIN_SCALE = 1e-3  # the VAE's Gaussian likelihood: scale = softplus(raw) + MIN_SCALE
IMPORTANCE_SAMPLES = 64  # k of the VAE's importance-weighted log_prob
_MAX_ROWS = 65536  # decoder rows (importance samples × examples) per chunk of log_prob
_SEED_SIZE = 4  # the image generator's first feature map is 4 × 4
_MAX_WIDTH = 1 << 16


def _check_leaf(leaf: leaves.Leaf) -> leaves.Leaf:
    if not isinstance(leaf, FAMILIES):
        raise TypeError(f"leaf must be one of the specs {', '.join(f.__name__ for f in FAMILIES)}; got {leaf!r}")
    return leaf


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _fit_width(build: Callable[[int], nn.Module], budget: int, what: str) -> int:
    """The width whose module (built on the meta device, so nothing is allocated) has the parameter count
    closest to ``budget``; a ``ValueError`` if that count is not within :data:`BUDGET_TOLERANCE` of it."""
    budget = checks.integer("budget", budget)

    def count(width: int) -> int:
        with torch.device("meta"):
            return sum(p.numel() for p in build(width).parameters())

    low, high = 1, 2
    while count(high) < budget and high < _MAX_WIDTH:
        low, high = high, 2 * high
    while high - low > 1:  # count(low) < budget <= count(high), or low = 1
        middle = (low + high) // 2
        low, high = (middle, high) if count(middle) < budget else (low, middle)
    width = min((low, high), key=lambda w: abs(count(w) - budget))
    if abs(count(width) - budget) > BUDGET_TOLERANCE * budget:
        smallest = count(1)
        reason = (f"the smallest {what} (width 1) has {smallest}" if smallest > budget
                  else f"the closest width {width} gives {count(width)}")
        raise ValueError(f"budget: no {what} has {budget} parameters within {BUDGET_TOLERANCE:.0%} ({reason}); "
                         f"use a larger budget")
    return width


class _Baseline(nn.Module):
    """Shared parts: the data's shape and leaf type, the latent size and the map into model space."""

    def __init__(self, event_shape: int | Sequence[int], leaf: leaves.Leaf, latent_dim: int) -> None:
        super().__init__()
        self.leaf = _check_leaf(leaf)
        self.event_shape = checks.event_shape(event_shape, max_dims=None)
        self.latent_dim = checks.integer("latent_dim", latent_dim)
        self.num_features = math.prod(self.event_shape)

    @property
    def scale(self) -> float:
        """Model-space data divided by it lie in ``[0, 1]`` (``total_count`` for Binomial data, else 1)."""
        return float(self.leaf.total_count) if isinstance(self.leaf, leaves.Binomial) else 1.0

    def _mean(self, raw: Tensor) -> Tensor:
        """Raw outputs → model-space means: ``total_count · sigmoid`` (binomial), ``sigmoid`` (bernoulli), as is."""
        return raw if isinstance(self.leaf, leaves.Normal) else torch.sigmoid(raw) * self.scale

    def _prior(self, sample_shape: Sequence[int]) -> Tensor:
        """Standard normal latents ``[*sample_shape, latent_dim]`` on the parameters' device."""
        reference = next(self.parameters())
        return torch.randn(*sample_shape, self.latent_dim, device=reference.device, dtype=reference.dtype)


class VAE(_Baseline):
    """A variational auto-encoder (Kingma and Welling 2014) with a Gaussian prior ``N(0, I)``.

    The encoder ``q(z | x)`` and the decoder ``p(x | z)`` are MLPs over the flattened data with two hidden
    layers of ``hidden`` units. The likelihood follows the leaf type: ``Binomial(total_count, logits)`` per
    entry for count data (a discrete likelihood, comparable to a circuit's ``log p(x)``),
    ``Bernoulli(logits)`` for binary data, and ``Normal(loc, scale)`` with a per-output learned scale for
    real-valued data. The encoder sees ``x / scale`` (pixels in ``[0, 1]``).

    Args:
        event_shape: the data's shape, ``(F,)`` or ``(C, H, W)``.
        leaf: the data's leaf family, ``Binomial(total_count=N)``, ``Normal()`` or ``Bernoulli()``.
        latent_dim: the number of latent variables.
        hidden: the width of the hidden layers.
        num_importance: ``k`` of the importance-weighted :meth:`log_prob`.
    """

    def __init__(self, event_shape: int | Sequence[int], leaf: leaves.Leaf, latent_dim: int = 16, hidden: int = 256,
                 num_importance: int = IMPORTANCE_SAMPLES) -> None:
        super().__init__(event_shape, leaf, latent_dim)
        hidden = checks.integer("hidden", hidden)
        self.num_importance = checks.integer("num_importance", num_importance)
        outputs = 2 * self.num_features if isinstance(leaf, leaves.Normal) else self.num_features
        self.encoder = _mlp([self.num_features, hidden, hidden, 2 * self.latent_dim])
        self.decoder = _mlp([self.latent_dim, hidden, hidden, outputs])

    @classmethod
    def with_budget(cls, event_shape: int | Sequence[int], budget: int, *, leaf: leaves.Leaf, latent_dim: int = 16,
                    num_importance: int = IMPORTANCE_SAMPLES) -> VAE:
        """The VAE whose encoder and decoder together have ``budget`` parameters (within 10 %).

        Raises:
            ValueError: no width reaches ``budget`` within 10 % (it is too small), or a bad argument.
        """
        def build(width: int) -> VAE:
            return cls(event_shape, leaf, latent_dim, width, num_importance)

        build(1)  # checks the arguments before the search
        return build(_fit_width(build, budget, "VAE"))

    # -- the model ------------------------------------------------------------------------------------
    def posterior(self, x: Tensor) -> Normal:
        """``q(z | x)`` for model-space ``x [N, *event_shape]``: a Normal of batch shape ``[N, latent_dim]``."""
        loc, raw_scale = self.encoder(x.reshape(x.shape[0], -1) / self.scale).chunk(2, dim=-1)
        return Normal(loc, F.softplus(raw_scale) + MIN_SCALE, validate_args=False)

    def likelihood(self, z: Tensor) -> Distribution:
        """``p(x | z)`` for latents ``z [*S, latent_dim]``: batch shape ``[*S, F]`` over the flattened data."""
        raw = self.decoder(z)
        if isinstance(self.leaf, leaves.Binomial):
            return Binomial(self.leaf.total_count, logits=raw, validate_args=False)
        if isinstance(self.leaf, leaves.Bernoulli):
            return Bernoulli(logits=raw, validate_args=False)
        loc, raw_scale = raw.chunk(2, dim=-1)
        return Normal(loc, F.softplus(raw_scale) + MIN_SCALE, validate_args=False)

    def _decoder_mean(self, z: Tensor) -> Tensor:
        """Model-space means ``[*S, *event_shape]`` of ``p(x | z)`` for ``z [*S, latent_dim]``."""
        raw = self.decoder(z)
        raw = raw[..., : self.num_features] if isinstance(self.leaf, leaves.Normal) else raw
        return self._mean(raw).reshape(*z.shape[:-1], *self.event_shape)

    def elbo(self, x: Tensor) -> Tensor:
        """The evidence lower bound ``E_q[log p(x | z)] − KL(q(z | x) ‖ p(z))`` ``[N]`` of ``x [N, *event_shape]``
        (one reparameterized draw, the KL term in closed form)."""
        q = self.posterior(x)
        log_likelihood = self.likelihood(q.rsample()).log_prob(x.reshape(x.shape[0], -1)).sum(-1)
        kl = (q.scale.pow(2) + q.loc.pow(2) - 1).mul(0.5).sub(q.scale.log()).sum(-1)
        return log_likelihood - kl

    def loss(self, x: Tensor) -> Tensor:
        """The negative ELBO, averaged over the batch ``x [N, *event_shape]``: a scalar."""
        return -self.elbo(x).mean()

    def log_prob(self, x: Tensor, num_importance: int | None = None) -> Tensor:
        """The importance-weighted estimate (IWAE, Burda et al. 2016) of ``log p(x)`` ``[N]`` for
        ``x [N, *event_shape]`` with ``k = num_importance`` (default: the VAE's) draws from ``q(z | x)`` per
        example: ``log (1/k) Σ_i p(x, z_i) / q(z_i | x)``.

        A stochastic lower bound of ``log p(x)`` in expectation, tighter than the ELBO, that approaches
        ``log p(x)`` as ``k`` grows.
        """
        k = self.num_importance if num_importance is None else checks.integer("num_importance", num_importance)
        chunks = []
        for part in x.split(max(1, _MAX_ROWS // k)):
            q = self.posterior(part)
            z = q.rsample((k,))  # [k, n, latent_dim]
            log_joint = (self.likelihood(z).log_prob(part.reshape(1, part.shape[0], -1)).sum(-1)
                         + Normal(0.0, 1.0).log_prob(z).sum(-1))
            chunks.append(torch.logsumexp(log_joint - q.log_prob(z).sum(-1), dim=0) - math.log(k))
        return torch.cat(chunks)

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Exact draws ``[*sample_shape, *event_shape]`` of the generative model: ``z ~ N(0, I)``, ``x ~ p(x | z)``
        (Binomial counts are integers ``0..total_count``)."""
        x = self.likelihood(self._prior(tuple(sample_shape))).sample()
        return x.reshape(*tuple(sample_shape), *self.event_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Differentiable stand-ins for samples, ``[*sample_shape, *event_shape]``: the decoder's mean at
        ``z ~ N(0, I)`` (reparameterized; no observation noise)."""
        return self._decoder_mean(self._prior(tuple(sample_shape)))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """The decoder's mean at the posterior mean of ``z``: ``x [N, *event_shape]`` → ``[N, *event_shape]``."""
        return self._decoder_mean(self.posterior(x).loc)


class Generator(_Baseline):
    """A GAN generator: latents ``z ~ N(0, I)`` mapped to model space; no likelihood.

    Images ``(C, H, W)``: DCGAN-style, a 4×4 transposed convolution from ``z`` to a 4 × 4 map, then
    transposed convolutions of stride 2 (each doubling the map, halving the channels, ReLU after each) until
    the map covers ``H × W``, a 3 × 3 convolution to ``C`` channels and a centered crop to ``H × W``; the
    last map has ``width`` channels. Other shapes: an MLP with two hidden layers of ``width`` units over the
    flattened data. The output goes through the leaf type's map (``total_count · sigmoid`` for counts).

    Args:
        event_shape: the data's shape, ``(F,)`` or ``(C, H, W)``.
        leaf: the data's leaf family, ``Binomial(total_count=N)``, ``Normal()`` or ``Bernoulli()``.
        latent_dim: the number of latent variables.
        width: the channels of the last feature map (images) or the hidden units (vectors).
    """

    def __init__(self, event_shape: int | Sequence[int], leaf: leaves.Leaf, latent_dim: int = 16,
                 width: int = 64) -> None:
        super().__init__(event_shape, leaf, latent_dim)
        width = checks.integer("width", width)
        if len(self.event_shape) == 3:
            channels, height, image_width = self.event_shape
            doublings = max(0, math.ceil(math.log2(max(height, image_width) / _SEED_SIZE)))
            sizes = [width * 2**(doublings - i) for i in range(doublings + 1)]
            layers: list[nn.Module] = [nn.Unflatten(1, (self.latent_dim, 1, 1)),
                                       nn.ConvTranspose2d(self.latent_dim, sizes[0], _SEED_SIZE), nn.ReLU()]
            for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True):
                layers += [nn.ConvTranspose2d(width_in, width_out, 4, stride=2, padding=1), nn.ReLU()]
            layers.append(nn.Conv2d(sizes[-1], channels, 3, padding=1))
            self.net = nn.Sequential(*layers)
        else:
            self.net = _mlp([self.latent_dim, width, width, self.num_features])

    @classmethod
    def with_budget(cls, event_shape: int | Sequence[int], budget: int, *, leaf: leaves.Leaf,
                    latent_dim: int = 16) -> Generator:
        """The generator with ``budget`` parameters (within 10 %).

        Raises:
            ValueError: no width reaches ``budget`` within 10 % (it is too small), or a bad argument.
        """
        def build(width: int) -> Generator:
            return cls(event_shape, leaf, latent_dim, width)

        build(1)  # checks the arguments before the search
        return build(_fit_width(build, budget, "generator"))

    def generate(self, z: Tensor) -> Tensor:
        """Latents ``z [N, latent_dim]`` → model-space samples ``[N, *event_shape]`` (differentiable)."""
        raw = self.net(z)
        if len(self.event_shape) == 3:
            height, width = self.event_shape[1:]
            top, left = (raw.shape[-2] - height) // 2, (raw.shape[-1] - width) // 2
            raw = raw[..., top:top + height, left:left + width]
        return self._mean(raw).reshape(z.shape[0], *self.event_shape)

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Differentiable samples ``[*sample_shape, *event_shape]`` (counts in ``[0, total_count]``, not rounded)."""
        shape = tuple(sample_shape)
        z = self._prior((math.prod(shape),))
        return self.generate(z).reshape(*shape, *self.event_shape)

    @torch.no_grad()
    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Samples ``[*sample_shape, *event_shape]`` in the data's support: :meth:`rsample` rounded to the
        nearest count (binomial) or to 0/1 (bernoulli); real values as they are (normal)."""
        x = self.rsample(sample_shape)
        return x if isinstance(self.leaf, leaves.Normal) else x.round()
