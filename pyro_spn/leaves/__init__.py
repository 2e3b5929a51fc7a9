"""Leaf families, one per module, as immutable specs (see :mod:`pyro_spn.leaves.base`).

==========================  =================================  =====================================
spec                        values                             differentiable draw
==========================  =================================  =====================================
``Normal``                  real                               ``loc + scale · ε`` (exact)
``Binomial(N)``             counts ``0..N``                    Gaussian approximation
``Bernoulli``               ``{0, 1}``                         binary Concrete
``Categorical(V)``          ``0..V-1``                         Gumbel-Softmax (expected value)
``Poisson``                 counts ``0, 1, …``                 Gaussian approximation
``Geometric``               counts ``0, 1, …``                 Gaussian approximation
``NegativeBinomial(r)``     counts ``0, 1, …``                 Gaussian approximation
``Exponential``             ``x >= 0``                         ``E / rate`` (exact)
``Gamma``                   ``x >= 0``                         implicit reparameterization (exact)
``Beta``                    ``[0, 1]``                         ratio of Gammas (exact)
``LogNormal``               ``x >= 0``                         ``exp(loc + scale · ε)`` (exact)
``ExponentialFamily(d)``    the torch class's support          torch's ``rsample``, else Gaussian
``Mixed``                   a family per group of variables    each group's own
==========================  =================================  =====================================

A spec holds hyper-parameters only; give it to :class:`pyro_spn.RatSPN`, which creates and owns the
parameters. :func:`leaf_from_config` reads back what :meth:`Leaf.to_config` wrote.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Leaf, Params
from .bernoulli import Bernoulli
from .beta import Beta
from .binomial import Binomial
from .categorical import Categorical
from .exponential import Exponential
from .exponential_family import ExponentialFamily
from .gamma import Gamma
from .geometric import Geometric
from .lognormal import LogNormal
from .mixed import Mixed
from .negative_binomial import NegativeBinomial
from .normal import Normal
from .poisson import Poisson

__all__ = ["LEAVES", "Bernoulli", "Beta", "Binomial", "Categorical", "Exponential", "ExponentialFamily", "Gamma",
           "Geometric", "Leaf", "LogNormal", "Mixed", "NegativeBinomial", "Normal", "Params", "Poisson",
           "leaf_from_config"]

#: Every leaf family by its name (:attr:`Leaf.name`).
LEAVES: dict[str, type[Leaf]] = {cls.name: cls for cls in (
    Normal, Binomial, Bernoulli, Categorical, Poisson, Geometric, NegativeBinomial, Exponential, Gamma, Beta,
    LogNormal, ExponentialFamily, Mixed)}


def leaf_from_config(config: Mapping[str, Any]) -> Leaf:
    """The spec :meth:`Leaf.to_config` described: ``{"type": name, **hyper-parameters}``.

    Raises:
        ValueError: an unknown type, unknown or missing hyper-parameters, or bad values.
    """
    if not isinstance(config, Mapping) or "type" not in config:
        raise ValueError(f"leaf config must be a mapping with a 'type', got {config!r}")
    kind = config["type"]
    if not isinstance(kind, str) or kind not in LEAVES:
        raise ValueError(f"leaf config: type must be one of {', '.join(LEAVES)}; got {kind!r}")
    options = {key: value for key, value in config.items() if key != "type"}
    try:
        if kind == "mixed":
            return Mixed(_mixed_groups(config, options))
        return LEAVES[kind](**options)
    except TypeError as error:
        raise ValueError(f"leaf config {dict(config)!r}: {error}") from None


def _mixed_groups(config: Mapping[str, Any], options: dict[str, Any]) -> tuple[tuple[Leaf, Any], ...]:
    """A mixed leaf's ``(leaf, size)`` groups from its config (``options``: the config without its type)."""
    groups = options.get("groups")
    if (set(options) != {"groups"} or not isinstance(groups, list)
            or not all(isinstance(g, list | tuple) and len(g) == 2 for g in groups)):
        raise ValueError(f"leaf config: a mixed leaf needs exactly 'groups', got {config!r}")
    return tuple((leaf_from_config(group[0]), group[1]) for group in groups)
