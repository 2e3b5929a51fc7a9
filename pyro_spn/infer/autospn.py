"""``AutoSPN``: an autoguide whose posterior is a sum-product network with Normal leaves.

Like :class:`pyro.infer.autoguide.AutoMultivariateNormal`, it maps every continuous latent site of the model to
unconstrained space and concatenates them into one vector of ``D`` dimensions (:class:`AutoContinuous` does the
flattening, the plates and the Jacobians); the posterior over that vector is a :class:`~pyro_spn.RatSPN` with
Normal leaves, a mixture of exponentially many Gaussians with exact density, marginals and conditionals, so it
can fit multimodal, ring-shaped and skewed posteriors that a Gaussian cannot.

Gradient estimators of the ELBO (``estimator=``):

* ``"implicit"`` (the default): exact samples with the exact pathwise gradient w.r.t. every parameter, sum weights
  included, by implicit differentiation of the circuit's conditional CDFs (:mod:`pyro_spn.infer.circuit_cdf`):
  unbiased, low variance; costs ``O(D)`` upward passes per step.
* ``"score"``: exact samples, not reparameterized: Pyro's ELBOs use the score function ``∇ log q`` of the circuit's
  exact density for all parameters (unbiased, high variance; ``TraceGraph_ELBO`` adds its baselines).
* ``"straight_through"``: exact samples with the Gumbel-Softmax relaxation's gradient (biased: it stops short of
  the posterior on multimodal problems).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, Literal, cast

import torch
from pyro import poutine
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from torch import Tensor
from torch.distributions import biject_to

from .. import checks
from ..distribution import SPNDistribution
from ..leaves import Normal
from ..spn import RatSPN
from .circuit_cdf import implicit_rsample, marginal_quantiles

PosteriorEstimator = Literal["implicit", "score", "straight_through"]
POSTERIOR_ESTIMATORS: tuple[PosteriorEstimator, ...] = ("implicit", "score", "straight_through")
_MIN_SCALE = 1e-3  # the Normal leaves' lower bound on the scale


class AutoSPNPosterior(SPNDistribution):
    """An :class:`~pyro_spn.SPNDistribution` over the unconstrained latent vector ``[*batch_shape, D]`` whose
    ``rsample`` follows the gradient estimator ``estimator`` (see :mod:`pyro_spn.infer.autospn`).

    With ``"score"`` the distribution is not reparameterized (``has_rsample`` is ``False``): Pyro draws exact
    samples and its ELBOs take the score-function term of the exact ``log_prob``.

    Args:
        spn: a one-channel circuit with Normal leaves over ``(D,)``.
        estimator: ``"implicit"``, ``"score"`` or ``"straight_through"``.
        temperature: the Gumbel-Softmax temperature of ``"straight_through"`` (unused by the others).
    """

    def __init__(self, spn: RatSPN, *, estimator: PosteriorEstimator = "implicit", temperature: float = 0.5,
                 validate_args: bool | None = None) -> None:
        super().__init__(spn, temperature=temperature, validate_args=validate_args)
        self.estimator = cast(PosteriorEstimator, checks.choice("estimator", estimator, POSTERIOR_ESTIMATORS))
        self.has_rsample = self.estimator != "score"

    def expand(self, batch_shape: Sequence[int], _instance: SPNDistribution | None = None) -> AutoSPNPosterior:
        new = cast(AutoSPNPosterior, self._get_checked_instance(AutoSPNPosterior, _instance))
        super().expand(batch_shape, new)
        new.estimator = self.estimator
        new.has_rsample = self.has_rsample
        return new

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Samples ``[*sample_shape, *batch_shape, D]`` with the estimator's gradient (exact values for every
        estimator); ``NotImplementedError`` for ``"score"``, which is not reparameterized."""
        if self.estimator == "score":
            raise NotImplementedError("estimator 'score' is not reparameterized: use sample() (Pyro does)")
        if self.estimator == "straight_through":
            return super().rsample(sample_shape)
        x = self.sample(sample_shape)
        return implicit_rsample(self.spn, x.reshape(-1, x.shape[-1])).reshape(x.shape)


def default_structure(latent_dim: int) -> dict[str, int]:
    """The circuit's size for ``D = latent_dim`` latent dimensions: ``depth = ⌈log₂ D⌉`` (at least 1, at most 4:
    leaf regions of single variables up to 16 dimensions), 8 sum units and 8 leaf components, 8 repetitions up to
    ``D = 4`` and 4 beyond (every variable's marginal a mixture of up to ``8 R`` Gaussians; in two dimensions the
    circuit is a mixture of ``64 R`` axis-aligned Gaussians)."""
    depth = min(max(1, math.ceil(math.log2(latent_dim))), 4)
    return {"depth": depth, "num_repetitions": 8 if latent_dim <= 4 else 4, "num_sums": 8, "num_leaves": 8}


class AutoSPN(AutoContinuous):
    """An autoguide whose posterior over the unconstrained, flattened latent vector is a sum-product network with
    Normal leaves (see :mod:`pyro_spn.infer.autospn`).

    Usage::

        guide = AutoSPN(model)
        svi = SVI(model, guide, Adam({"lr": 0.01}), Trace_ELBO(num_particles=16, vectorize_particles=True))

    The circuit is built at the first call (when the latent dimension ``D`` is known): its sizes default to
    :func:`default_structure` and each may be set. Every leaf component starts with scale ``init_scale`` at the
    latent vector of ``init_loc_fn`` plus ``init_spread`` times a standard Normal draw (or, with
    ``init_spread=None``, at a draw of the model's prior, unconstrained): a spread of components, so that the guide
    starts with mass near several modes (the reverse KL of the ELBO seldom finds a mode that no component is near).

    :meth:`median` and :meth:`quantiles` are the exact quantiles of each unconstrained coordinate's marginal (by
    bisection on its CDF), mapped to the constrained space.

    Args:
        model: a Pyro model whose latent sites are all continuous.
        depth: ``D >= 1`` of the circuit (:class:`~pyro_spn.RatSPN`).
        num_repetitions: ``R >= 1``.
        num_sums: ``K``, sum units per region.
        num_leaves: ``I``, leaf components per leaf region.
        init_loc_fn: a per-site initialization (:mod:`pyro.infer.autoguide.initialization`), the centre of the
            leaf components (unless ``init_spread`` is ``None``).
        init_scale: the initial scale of every leaf component, ``> 0``.
        init_spread: the standard deviation ``>= 0`` of the leaf components' locations around the centre of
            ``init_loc_fn``, or ``None``: at draws of the prior (which suits priors not much wider than the
            posterior; components far out in a wide prior slow the fit down).
        estimator: ``"implicit"`` (default), ``"score"`` or ``"straight_through"``.
        temperature: the Gumbel-Softmax temperature of ``"straight_through"``.
        seed: seeds the region graph and the initialization.

    Raises:
        TypeError, ValueError: bad arguments (named); at the first call, ``ValueError`` naming ``model`` if a
        latent site is discrete.
    """

    def __init__(self, model: Callable[..., Any], *, depth: int | None = None, num_repetitions: int | None = None,
                 num_sums: int | None = None, num_leaves: int | None = None,
                 init_loc_fn: Callable[[dict[str, Any]], Tensor] = init_to_median, init_scale: float = 0.5,
                 init_spread: float | None = 1.0, estimator: PosteriorEstimator = "implicit",
                 temperature: float = 0.5, seed: int = 0) -> None:
        if not callable(model):
            raise TypeError(f"model must be a callable Pyro model, got {model!r}")
        self._sizes = {name: checks.integer(name, value, maximum=30 if name == "depth" else checks.MAX_INT)
                       for name, value in (("depth", depth), ("num_repetitions", num_repetitions),
                                           ("num_sums", num_sums), ("num_leaves", num_leaves)) if value is not None}
        self._init_scale = checks.number("init_scale", init_scale, minimum=_MIN_SCALE, open_minimum=True)
        self._init_spread = None if init_spread is None else checks.number("init_spread", init_spread, minimum=0.0)
        self.estimator = cast(PosteriorEstimator, checks.choice("estimator", estimator, POSTERIOR_ESTIMATORS))
        self.temperature = checks.positive("temperature", temperature)
        self._seed = checks.integer("seed", seed, minimum=0, maximum=2**63 - 1)
        super().__init__(model, init_loc_fn=init_loc_fn)
        self._prior_model: tuple[Callable[..., Any], ...] | None = (model,)  # a tuple: not a submodule

    def __getstate__(self) -> dict[str, Any]:
        self._prior_model = None  # models are not pickled (as AutoGuide drops its own reference)
        return cast(dict[str, Any], super().__getstate__())

    # -- building -------------------------------------------------------------------------------------------
    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except (NotImplementedError, ValueError):
            self._check_continuous()
            raise
        self._check_continuous()
        self.spn = self._build_circuit(self._component_locations(*args, **kwargs))

    def _check_continuous(self) -> None:
        """``ValueError`` naming ``model`` if its prototype trace has a latent site with a discrete support."""
        if self.prototype_trace is None:
            return
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            support = site["fn"].support
            if support.is_discrete:
                raise ValueError(
                    f"model: AutoSPN needs every latent site to be continuous; site {name!r} has the discrete "
                    f"support {support}. Expected a continuous support (real, positive, interval, simplex, ...): "
                    f"enumerate discrete sites out (config_enumerate + TraceEnum_ELBO) and hide them from the "
                    f"guide, e.g. AutoSPN(poutine.block(model, hide=[{name!r}]))")

    def structure(self) -> dict[str, int]:
        """The circuit's ``depth``, ``num_repetitions``, ``num_sums`` and ``num_leaves``: the defaults for the latent
        dimension (:func:`default_structure`) with the ones given to the constructor."""
        return {**default_structure(self.latent_dim), **self._sizes}

    def _component_locations(self, *args: Any, **kwargs: Any) -> Tensor:
        """The initial locations ``[I R, D]`` of the leaf components (component ``(i, r)`` at row ``i R + r``): draws
        of the model's prior, unconstrained and flattened (``init_spread=None``), or the latent vector of
        ``init_loc_fn`` plus ``init_spread`` times standard Normal noise."""
        sizes = self.structure()
        count = sizes["num_leaves"] * sizes["num_repetitions"]
        if self._init_spread is not None:
            centre = self._init_loc().detach()
            generator = torch.Generator().manual_seed(self._seed)
            noise = torch.randn((count, self.latent_dim), generator=generator).to(centre)
            return centre + self._init_spread * noise
        with torch.random.fork_rng(), torch.no_grad():
            torch.manual_seed(self._seed)
            return torch.stack([self._prior_draw(*args, **kwargs) for _ in range(count)])

    def _prior_draw(self, *args: Any, **kwargs: Any) -> Tensor:
        """One draw of the model's prior (its latent sites, observed sites kept), unconstrained and flattened as
        the latent vector, ``[D]``."""
        if self._prior_model is None:
            raise RuntimeError("init_spread=None needs the model, which a pickled AutoSPN no longer holds")
        model = poutine.block(self._prior_model[0], hide_fn=self._prototype_hide_fn)
        trace = poutine.block(poutine.trace(model).get_trace)(*args, **kwargs)  # unseen by the handlers outside
        assert self.prototype_trace is not None
        parts = [biject_to(site["fn"].support).inv(trace.nodes[name]["value"]).reshape(-1)
                 for name, site in self.prototype_trace.iter_stochastic_nodes()]
        return torch.cat(parts)

    def _build_circuit(self, locations: Tensor) -> RatSPN:
        """The circuit over ``D`` variables, its leaf components at ``locations`` ``[I R, D]``
        (:meth:`_component_locations`) with scale ``init_scale``."""
        sizes = self.structure()
        spn = RatSPN(self.latent_dim, leaf=Normal(min_scale=_MIN_SCALE), seed=self._seed, depth=sizes["depth"],
                     num_repetitions=sizes["num_repetitions"], num_sums=sizes["num_sums"],
                     num_leaves=sizes["num_leaves"])
        loc, raw_scale = (cast(Tensor, getattr(spn.leaf_layer, name)) for name in ("loc", "raw_scale"))
        with torch.no_grad():
            rows = locations.detach().cpu().float().view(spn.num_leaves, spn.num_repetitions, self.latent_dim)
            loc.copy_(rows.permute(2, 0, 1)[None])
            raw_scale.fill_(math.log(math.expm1(self._init_scale - _MIN_SCALE)))
        return spn.to(dtype=locations.dtype, device=locations.device)

    # -- the posterior ----------------------------------------------------------------------------------------
    def get_posterior(self, *args: Any, **kwargs: Any) -> AutoSPNPosterior:
        """The circuit's distribution over the unconstrained latent vector ``[D]``."""
        return AutoSPNPosterior(self.spn, estimator=self.estimator, temperature=self.temperature)

    def get_base_dist(self) -> Any:
        raise NotImplementedError("AutoSPN's posterior is a circuit, not a transformed base distribution")

    def get_transform(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("AutoSPN's posterior is a circuit, not a transformed base distribution")

    def _loc_scale(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """The posterior's exact mean ``[D]`` and the marginal standard deviations ``[D]`` (unconstrained)."""
        posterior = self.get_posterior(*args, **kwargs)
        mean = posterior.mean.detach()
        with torch.no_grad():
            x = posterior.sample((4096,))
        return mean, x.std(0)

    @torch.no_grad()
    def median(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The median of every unconstrained coordinate's exact marginal, mapped to the constrained space:
        ``{site name: value}``."""
        return {name: value[0] for name, value in self.quantiles([0.5], *args, **kwargs).items()}

    @torch.no_grad()
    def quantiles(self, quantiles: Sequence[float] | Tensor, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """The quantiles of every unconstrained coordinate's exact marginal, mapped to the constrained space.

        Args:
            quantiles: ``Q`` probabilities in ``(0, 1)``.

        Returns:
            ``{site name: [Q, *site shape]}``.
        """
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        probabilities = torch.as_tensor(quantiles, dtype=torch.float64).flatten()
        if probabilities.numel() == 0 or bool(((probabilities <= 0) | (probabilities >= 1)).any()):
            raise ValueError(f"quantiles: expected probabilities in (0, 1), got {quantiles!r}")
        latents = marginal_quantiles(self.spn, probabilities)  # [Q, D]
        result: dict[str, list[Tensor]] = {}
        for latent in latents:
            for site, unconstrained in self._unpack_latent(latent):
                result.setdefault(site["name"], []).append(biject_to(site["fn"].support)(unconstrained))
        return {name: torch.stack(values) for name, values in result.items()}


__all__ = ["POSTERIOR_ESTIMATORS", "AutoSPN", "AutoSPNPosterior", "default_structure"]
