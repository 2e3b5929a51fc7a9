"""EM for every leaf family (:meth:`pyro_spn.leaves.Leaf.maximize`): full-batch EM never decreases the training
likelihood, and each family's M-step is the weighted maximum-likelihood estimate (against a numeric optimum found by
L-BFGS on the same weighted data)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.distributions import Beta as TorchBeta
from torch.distributions import Gamma as TorchGamma

from pyro_spn import RatSPN
from pyro_spn.em import EM, expected_counts
from pyro_spn.leaves import (
    Bernoulli,
    Beta,
    Binomial,
    Categorical,
    Exponential,
    ExponentialFamily,
    Gamma,
    Geometric,
    Leaf,
    LogNormal,
    Mixed,
    NegativeBinomial,
    Normal,
    Poisson,
)

FAMILIES: dict[str, Leaf] = {
    "normal": Normal(),
    "binomial": Binomial(total_count=5),
    "bernoulli": Bernoulli(),
    "categorical": Categorical(num_categories=3),
    "poisson": Poisson(),
    "geometric": Geometric(),
    "negative_binomial": NegativeBinomial(total_count=3),
    "exponential": Exponential(),
    "gamma": Gamma(),
    "beta": Beta(),
    "lognormal": LogNormal(),
    "ef_gamma": ExponentialFamily("Gamma"),
    "ef_gamma_fixed_rate": ExponentialFamily("Gamma", fixed={"rate": 2.0}),
    "ef_poisson": ExponentialFamily("Poisson"),
    "ef_normal": ExponentialFamily("Normal"),
    "ef_beta": ExponentialFamily("Beta"),
}
MIXED = Mixed(((Poisson(), 2), (Beta(), 2), (ExponentialFamily("Gamma"), 2)))
#: The families of the monotonicity test beyond those of ``tests/test_em.py`` (which checks Normal, Binomial,
#: Bernoulli, Categorical and a Mixed leaf of them).
NEW_FAMILIES = sorted(set(FAMILIES) - {"normal", "binomial", "bernoulli", "categorical"})


def _data(leaf: Leaf, n: int, num_features: int, seed: int) -> Tensor:
    """``[n, F]`` float64 data in the support of ``leaf``, from two clusters."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        cluster = torch.randint(0, 2, (n, 1)).double().expand(n, num_features)
        if isinstance(leaf, Mixed):
            return torch.cat([_data(member, n, size, seed + g) for g, (member, size) in enumerate(leaf.groups)], 1)
        support = leaf.support
        if isinstance(leaf, Normal) or support is torch.distributions.constraints.real:
            return 3.0 * cluster - 1.5 + torch.randn(n, num_features, dtype=torch.float64)
        if isinstance(leaf, Binomial):
            return torch.binomial(torch.full_like(cluster, 5.0), 0.2 + 0.6 * cluster)
        if isinstance(leaf, Bernoulli):
            return torch.bernoulli(0.2 + 0.6 * cluster)
        if isinstance(leaf, Categorical):
            return (cluster + torch.randint(0, 2, cluster.shape).double()).clamp_max(2.0)
        if support.is_discrete:  # counts 0, 1, 2, ...
            return torch.poisson(1.0 + 5.0 * cluster)
        if support is torch.distributions.constraints.unit_interval:
            return TorchBeta(2.0 + 3.0 * cluster, 5.0 - 3.0 * cluster).sample()
        return TorchGamma(2.0 + 3.0 * cluster, torch.ones_like(cluster)).sample()


def _circuit(leaf: Leaf) -> RatSPN:
    return RatSPN(6, depth=2, num_repetitions=3, num_sums=3, num_leaves=3, leaf=leaf, seed=1).double()


def _mean_ll(spn: RatSPN, x: Tensor) -> float:
    with torch.no_grad():
        return float(spn(x).mean())


@pytest.mark.parametrize("name", [*NEW_FAMILIES, "mixed"])
def test_full_batch_em_increases_the_likelihood_monotonically(name: str) -> None:
    leaf = MIXED if name == "mixed" else FAMILIES[name]
    spn = _circuit(leaf)
    x = _data(leaf, 150, 6, seed=3)
    em = EM(spn, step_size=1.0, weight_prior=0.0, leaf_prior=0.0, min_variance=1e-3)
    history = [_mean_ll(spn, x)]
    for _ in range(12):
        em.step(x)
        history.append(_mean_ll(spn, x))
    steps = [b - a for a, b in zip(history, history[1:], strict=False)]
    assert all(math.isfinite(v) for v in history), history
    assert min(steps) >= -1e-6, steps
    assert history[-1] > history[0] + 0.1, history


def _weighted_ll(leaf: Leaf, raw: dict[str, Tensor], x: Tensor, q: Tensor) -> Tensor:
    """``Σ_n q_n log p(x_n)`` of one component of unconstrained parameters ``raw`` (each ``[1, 1, 1, 1, *E]``)."""
    params = leaf.constrain({name: p[0, 0, 0] for name, p in raw.items()})  # [1, *E]
    return (q * leaf.log_prob(x[:, None], params)[:, 0]).sum()


def _numeric_optimum(leaf: Leaf, start: dict[str, Tensor], x: Tensor, q: Tensor) -> dict[str, Tensor]:
    """The weighted MLE by L-BFGS from ``start``."""
    raw = {name: p.clone().requires_grad_(True) for name, p in start.items()}
    optimizer = torch.optim.LBFGS(list(raw.values()), lr=1.0, max_iter=200, tolerance_grad=1e-12,
                                  tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -_weighted_ll(leaf, raw, x, q) / q.sum()
        loss.backward()
        return loss

    for _ in range(5):
        optimizer.step(closure)
    return {name: p.detach() for name, p in raw.items()}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_the_m_step_is_the_weighted_maximum_likelihood_estimate(name: str) -> None:
    leaf = FAMILIES[name]
    x = _data(leaf, 80, 1, seed=11)[:, 0]  # [N]
    q = torch.rand(80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # posterior weights
    count = q.sum().reshape(1, 1, 1, 1)
    total = (q[:, None] * leaf.sufficient_statistics(x)).sum(0).reshape(1, 1, 1, 1, -1)
    start = {name: p.double() for name, p in
             leaf.init_parameters(torch.Size((1, 1, 1, 1)), torch.Generator().manual_seed(0)).items()}
    fitted = leaf.maximize(count, total, start, prior=0.0, min_variance=1e-9)
    assert set(fitted) == set(start) and all(fitted[k].shape == start[k].shape for k in start)
    numeric = _numeric_optimum(leaf, start, x, q)
    best, found = _weighted_ll(leaf, fitted, x, q), _weighted_ll(leaf, numeric, x, q)
    assert float(best) >= float(found) - 1e-7 * abs(float(found)) - 1e-9, (float(best), float(found))
    for summary in (leaf.mean, leaf.variance):  # the same law (Categorical logits are only defined up to a shift)
        torch.testing.assert_close(summary(leaf.constrain(fitted)), summary(leaf.constrain(numeric)),
                                   rtol=2e-4, atol=1e-6)


def test_a_mixed_leaf_delegates_to_each_group() -> None:
    spn = _circuit(MIXED)
    stats, _, _ = expected_counts(spn, _data(MIXED, 60, 6, seed=5))
    current = dict(spn.leaf_layer.named_parameters())
    fitted = MIXED.maximize(stats["leaf_count"], stats["leaf_sum"], current, prior=0.0, min_variance=1e-3)
    start = 0
    for group, (member, size) in enumerate(MIXED.groups):
        own = {name[3:]: p for name, p in current.items() if name.startswith(f"g{group}_")}
        alone = member.maximize(stats["leaf_count"][:, start:start + size],
                                stats["leaf_sum"][:, start:start + size, ..., :member.num_statistics], own,
                                prior=0.0, min_variance=1e-3)
        for name, value in alone.items():
            torch.testing.assert_close(fitted[f"g{group}_{name}"], value, equal_nan=True)
        start += size


@dataclass(frozen=True)
class _NoMStep(Normal):
    """A family whose M-step is the base class's (none)."""

    moment_match = Leaf.moment_match


@pytest.mark.parametrize("leaf", [_NoMStep(), Mixed(((Poisson(), 3), (_NoMStep(), 3)))])
def test_a_family_without_an_m_step_is_refused_at_construction(leaf: Leaf) -> None:
    assert not leaf.maximizable
    with pytest.raises(ValueError, match=r"spn: EM cannot fit .*_NoMStep"):
        EM(_circuit(leaf))


def test_a_version_1_state_of_one_family_still_loads() -> None:
    leaf = FAMILIES["poisson"]
    em = EM(_circuit(leaf))
    em.step(_data(leaf, 40, 6, seed=6))
    state = em.state_dict()
    names = {"leaf_count": "leaf0_count", "leaf_sum": "leaf0_sum"}
    old = {**state, "version": 1, "statistics": {names.get(k, k): v for k, v in state["statistics"].items()}}
    resumed = EM(_circuit(leaf))
    resumed.load_state_dict(old)
    assert resumed.num_steps == 1 and set(resumed.statistics) == set(state["statistics"])


def test_the_generic_adapter_stays_finite_where_the_optimum_lies_at_the_edge() -> None:
    leaf = ExponentialFamily("Poisson")
    spn = RatSPN(6, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, leaf=leaf, seed=0)  # float32
    x = torch.zeros(20, 6)  # the MLE rate is 0: log rate → −∞
    em = EM(spn, step_size=1.0)
    for _ in range(10):
        em.step(x)
    assert bool(torch.isfinite(spn(x)).all()) and bool(torch.isfinite(spn(torch.ones(3, 6))).all())
