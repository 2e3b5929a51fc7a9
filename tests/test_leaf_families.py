"""The leaf families beyond Normal/Binomial/Bernoulli/Categorical: Poisson, Geometric, NegativeBinomial, Exponential,
Gamma, Beta, LogNormal and the generic ExponentialFamily adapter, through the whole circuit.

Normalization is checked by brute force (discrete: every state up to where each component's tail mass is below
1e-12) or Gauss-Legendre quadrature (continuous); samples by a chi² test against the circuit's exact probabilities
(discrete) or a Kolmogorov-Smirnov test against the exact mixture CDF of a variable (continuous), at p > 1e-3 under
fixed seeds.
"""

from __future__ import annotations

import functools
import itertools
import json
import math

import numpy as np
import pytest
import torch
import torch.distributions as D
from conftest import goodness_of_fit
from scipy import stats

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.expectations import posterior_flows, rbf_expectations, support_log_probs
from pyro_spn.leaves import (
    LEAVES,
    Beta,
    Exponential,
    ExponentialFamily,
    Gamma,
    Geometric,
    Leaf,
    LogNormal,
    Mixed,
    NegativeBinomial,
    Params,
    Poisson,
    leaf_from_config,
)

FAMILIES = {
    "poisson": lambda: Poisson(),
    "geometric": lambda: Geometric(),
    "negative_binomial": lambda: NegativeBinomial(total_count=2.5),
    "exponential": lambda: Exponential(),
    "gamma": lambda: Gamma(),
    "beta": lambda: Beta(),
    "lognormal": lambda: LogNormal(),
    "ef_poisson": lambda: ExponentialFamily("Poisson"),
    "ef_gamma": lambda: ExponentialFamily("Gamma"),
    "ef_normal": lambda: ExponentialFamily("Normal"),
}
DISCRETE = ["poisson", "geometric", "negative_binomial", "ef_poisson"]
CONTINUOUS = ["exponential", "gamma", "beta", "lognormal", "ef_gamma", "ef_normal"]
#: Raw parameters are drawn uniformly in these ranges (smooth, bounded densities, light tails: quadrature and
#: truncation stay accurate).
RAW_RANGES = {"log_rate": (math.log(0.5), math.log(4.0)), "logits": (-0.5, 1.5),
              "log_concentration": (math.log(1.5), math.log(5.0)), "log_concentration1": (math.log(1.5), math.log(5.0)),
              "log_concentration0": (math.log(1.5), math.log(5.0)), "loc": (-0.5, 0.5),
              "raw_scale": (-0.7, 0.3), "raw_rate": (-0.7, 0.7), "raw_concentration": (0.4, 1.6),
              "raw_loc": (-1.0, 1.0), "raw_scale_": (-0.7, 0.3)}
TAIL = 1e-12


def circuit(name: str, num_features: int = 2, seed: int = 0) -> RatSPN:
    """A small float64 circuit of family ``name`` with spread-out sum weights and leaf parameters in RAW_RANGES."""
    spn = RatSPN(num_features, depth=1, num_repetitions=2, num_sums=2, num_leaves=3, leaf=FAMILIES[name](),
                 seed=seed).double()
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for param_name, p in spn.named_parameters():
            short = param_name.rsplit(".", 1)[-1]
            if short in RAW_RANGES:
                low, high = RAW_RANGES[short]
                p.copy_(low + (high - low) * torch.rand(p.shape, generator=generator, dtype=p.dtype))
            else:
                p.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return spn


def reference(leaf: Leaf, params: Params) -> D.Distribution:
    """The ``torch.distributions`` law of the components ``params``."""
    if isinstance(leaf, Poisson):
        return D.Poisson(params["log_rate"].exp())
    if isinstance(leaf, Geometric):
        return D.Geometric(logits=params["logits"])
    if isinstance(leaf, NegativeBinomial):
        return D.NegativeBinomial(leaf.total_count, logits=params["logits"])
    if isinstance(leaf, Exponential):
        return D.Exponential(params["log_rate"].exp())
    if isinstance(leaf, Gamma):
        return D.Gamma(params["log_concentration"].exp(), params["log_rate"].exp())
    if isinstance(leaf, Beta):
        return D.Beta(params["log_concentration1"].exp(), params["log_concentration0"].exp())
    if isinstance(leaf, LogNormal):
        return D.LogNormal(params["loc"], params["scale"])
    if isinstance(leaf, ExponentialFamily):
        return leaf.torch_distribution(params)
    raise TypeError(leaf)


def scipy_cdf(leaf: Leaf, params: Params, x: np.ndarray) -> np.ndarray:
    """CDFs of the components (flattened, ``[K]``) at ``x [n]``: ``[n, K]`` (continuous families)."""
    p = {k: v.detach().flatten().numpy() for k, v in params.items()}
    x = x[:, None]
    if isinstance(leaf, Exponential):
        return stats.expon.cdf(x, scale=np.exp(-p["log_rate"]))
    if isinstance(leaf, Gamma):
        return stats.gamma.cdf(x, np.exp(p["log_concentration"]), scale=np.exp(-p["log_rate"]))
    if isinstance(leaf, Beta):
        return stats.beta.cdf(x, np.exp(p["log_concentration1"]), np.exp(p["log_concentration0"]))
    if isinstance(leaf, LogNormal):
        return stats.lognorm.cdf(x, p["scale"], scale=np.exp(p["loc"]))
    if isinstance(leaf, ExponentialFamily) and leaf.distribution == "Gamma":
        return stats.gamma.cdf(x, p["concentration"], scale=1 / p["rate"])
    if isinstance(leaf, ExponentialFamily) and leaf.distribution == "Normal":
        return stats.norm.cdf(x, p["loc"], p["scale"])
    raise TypeError(leaf)


def truncation(spn: RatSPN) -> int:
    """The largest count ``K`` needed: every component's mass above ``K`` is below :data:`TAIL`."""
    layer = spn.leaf_layer
    law = reference(layer.leaf, {k: v.detach() for k, v in layer.params().items()})
    mass, k = torch.zeros(layer.shape, dtype=torch.float64), 0
    while True:
        mass = mass + law.log_prob(torch.tensor(float(k), dtype=torch.float64)).exp()
        if bool((1 - mass < TAIL).all()):
            return k
        k += 1
        assert k < 10_000


@functools.lru_cache
def _legendre(size: int) -> tuple[np.ndarray, np.ndarray]:
    return np.polynomial.legendre.leggauss(size)


def gauss_legendre(leaf: Leaf, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights ``[size]`` of a quadrature over the support (``x = u / (1 − u)`` on ``(0, ∞)``,
    ``x = tan(π (u − ½))`` on the real line)."""
    nodes, weights = _legendre(size)
    u, w = torch.tensor((nodes + 1) / 2), torch.tensor(weights / 2)
    support = leaf.support
    if support is D.constraints.unit_interval:
        return u, w
    if support is D.constraints.real:
        return torch.tan(math.pi * (u - 0.5)), w * math.pi / torch.cos(math.pi * (u - 0.5)).square()
    return u / (1 - u), w / (1 - u).square()


# --------------------------------------------------------------------------------------------------
# specs
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_config_round_trip_and_registry(name):
    spec = FAMILIES[name]()
    config = spec.to_config()
    assert json.loads(json.dumps(config)) == config
    assert leaf_from_config(config) == spec
    assert LEAVES[spec.name] is type(spec)
    assert hash(leaf_from_config(config)) == hash(spec)


def test_bad_hyper_parameters_name_the_argument():
    for bad in (0, -1.0, math.inf):
        with pytest.raises(ValueError, match="total_count"):
            NegativeBinomial(total_count=bad)
    with pytest.raises(ValueError, match="min_scale"):
        LogNormal(min_scale=0.0)
    with pytest.raises(ValueError, match="distribution"):
        ExponentialFamily("Cauchy")
    with pytest.raises(ValueError, match="distribution"):
        ExponentialFamily("Dirichlet")  # multivariate
    with pytest.raises(ValueError, match="distribution"):
        ExponentialFamily("ContinuousBernoulli")  # no mode in torch
    with pytest.raises(ValueError, match="fixed"):
        ExponentialFamily("Gamma", fixed={"rate": -1.0})
    with pytest.raises(ValueError, match="fixed"):
        ExponentialFamily("Gamma", fixed={"scale": 1.0})
    with pytest.raises(ValueError, match="fixed"):
        ExponentialFamily("Poisson", fixed={"rate": 2.0})  # nothing left to learn
    with pytest.raises(ValueError, match="fixed"):
        ExponentialFamily("Bernoulli", fixed={"probs": 0.3})  # logits are probs, spelled otherwise
    for config in ({"type": "negative_binomial"}, {"type": "negative_binomial", "total_count": 0},
                   {"type": "poisson", "rate": 1.0}, {"type": "exponential_family", "distribution": "Foo"}):
        with pytest.raises(ValueError):
            leaf_from_config(config)


def test_exponential_family_accepts_the_class_and_fixed_hyper_parameters():
    assert ExponentialFamily(D.Gamma) == ExponentialFamily("Gamma")
    spec = ExponentialFamily("Gamma", fixed={"rate": 2.0})
    assert spec.fixed == (("rate", 2.0),) and spec.learnable == ("concentration",)
    assert leaf_from_config(spec.to_config()) == spec
    spn = RatSPN(2, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=spec, seed=0)
    assert set(dict(spn.leaf_layer.named_parameters())) == {"raw_concentration"}
    params = spn.leaf_layer.params()
    x = torch.rand(5, 1, 2, 1, 1) * 3 + 0.1
    torch.testing.assert_close(spec.log_prob(x, params), D.Gamma(params["concentration"], 2.0).log_prob(x))


@pytest.mark.parametrize("distribution, statistics", [
    ("Normal", lambda x: torch.stack([x, x * x], -1)),
    ("Gamma", lambda x: torch.stack([x.log(), x], -1)),
    ("Poisson", lambda x: x[..., None]),
])
def test_exponential_family_adapter_identifies_statistics(distribution, statistics):
    spec = ExponentialFamily(distribution)
    x = torch.tensor([0.0, 1.0, 2.0, 7.0, 30.0], dtype=torch.float64) + (0.5 if distribution != "Poisson" else 0.0)
    torch.testing.assert_close(spec.sufficient_statistics(x), statistics(x), rtol=1e-9, atol=1e-9)
    expected = -torch.lgamma(x + 1) if distribution == "Poisson" else torch.zeros_like(x)
    torch.testing.assert_close(spec.log_base_measure(x), expected, rtol=1e-9, atol=1e-9)


def test_exponential_family_adapter_with_a_constant_natural_parameter():
    """Chi2 varies one of Gamma's two natural parameters: the other's statistic is absorbed into h, exactly."""
    spec = ExponentialFamily("Chi2")
    params = {"df": torch.tensor([[0.7], [3.0], [11.0]], dtype=torch.float64)}
    x = torch.tensor([0.01, 0.5, 4.0, 20.0], dtype=torch.float64)
    pieces = (spec.sufficient_statistics(x) * spec.natural_parameters(params)).sum(-1)  # [3, 4]
    composed = pieces - spec.log_normalizer(params) + spec.log_base_measure(x)
    torch.testing.assert_close(composed, D.Chi2(params["df"]).log_prob(x), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_exponential_family_pieces_match_torch(name):
    spn = circuit(name, num_features=3)
    leaf, params = spn.leaf, {k: v.detach() for k, v in spn.leaf_layer.params().items()}
    law = reference(leaf, params)
    x = law.sample((6,))  # [6, C, F, I, R]
    eta, a = leaf.natural_parameters(params), leaf.log_normalizer(params)
    composed = (leaf.sufficient_statistics(x) * eta).sum(-1) - a + leaf.log_base_measure(x)
    torch.testing.assert_close(composed, law.log_prob(x), rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(leaf.log_prob(x, params), law.log_prob(x), rtol=1e-7, atol=1e-7)


# --------------------------------------------------------------------------------------------------
# the circuit: normalization, marginals, samples
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_circuit_normalizes_by_brute_force(name):
    spn = circuit(name)
    k = truncation(spn)
    states = torch.tensor(list(itertools.product(range(k + 1), repeat=2)), dtype=torch.float64)
    with torch.no_grad():
        log_p = spn(states)
        total = log_p.exp().sum()
        assert abs(float(total) - 1) < 1e-9
        # the marginal of variable 0 (NaN) is the sum over variable 1
        values = torch.arange(k + 1.0, dtype=torch.float64)
        marginal = spn(torch.stack([values, torch.full_like(values, math.nan)], -1)).exp()
        torch.testing.assert_close(marginal, log_p.exp().view(k + 1, k + 1).sum(1), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_circuit_normalizes_by_quadrature(name):
    spn = circuit(name)
    nodes, weights = gauss_legendre(spn.leaf, 400)
    grid = torch.stack(torch.meshgrid(nodes, nodes, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = spn(grid).exp().view(len(nodes), len(nodes))
        total = weights @ density @ weights
        assert abs(float(total) - 1) < 1e-6, float(total)
        marginal = spn(torch.stack([nodes, torch.full_like(nodes, math.nan)], -1)).exp()
        torch.testing.assert_close(marginal, density @ weights, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_samples_match_the_circuit(name):
    torch.manual_seed(3)
    spn = circuit(name)
    k = truncation(spn)
    states = torch.tensor(list(itertools.product(range(k + 1), repeat=2)), dtype=torch.float64)
    with torch.no_grad():
        probs = spn(states).exp()
        probs = probs / probs.sum()
        draws = SPNDistribution(spn).sample((4000,))
    assert bool((draws == draws.round()).all()) and bool((draws >= 0).all())
    index = (draws[:, 0] * (k + 1) + draws[:, 1]).long()
    assert int(index.max()) < len(states)
    counts = torch.bincount(index, minlength=len(states))
    assert goodness_of_fit(counts, probs) > 1e-3


def mixture_cdf(spn: RatSPN, evidence: torch.Tensor, x: np.ndarray, variable: int) -> np.ndarray:
    """The exact CDF at ``x`` of ``variable`` given ``evidence [1, F]``: the components' CDFs weighted by their
    posterior flows."""
    with torch.no_grad():
        flows = posterior_flows(spn, evidence)[0, variable].flatten().numpy()  # [I * R]
        params = {k: v[:, variable] for k, v in spn.leaf_layer.params().items()}  # [C, I, R]
    return scipy_cdf(spn.leaf, params, x) @ flows


@pytest.mark.parametrize("name", CONTINUOUS)
def test_continuous_samples_match_the_mixture_cdf(name):
    torch.manual_seed(4)
    spn = circuit(name)
    d = SPNDistribution(spn)
    draws = d.sample((3000,))
    free = torch.full((1, 2), math.nan, dtype=torch.float64)
    for variable in range(2):
        values = draws[:, variable].numpy()
        result = stats.kstest(values, lambda x, v=variable: mixture_cdf(spn, free, x, v))
        assert result.pvalue > 1e-3, (variable, result)
    # conditionally on variable 1
    evidence = torch.tensor([[math.nan, float(draws[0, 1])]], dtype=torch.float64)
    given = d.condition(evidence[0]).sample((3000,))
    assert bool((given[:, 1] == evidence[0, 1]).all())
    result = stats.kstest(given[:, 0].numpy(), lambda x: mixture_cdf(spn, evidence, x, 0))
    assert result.pvalue > 1e-3, result


@pytest.mark.parametrize("name", DISCRETE)
def test_discrete_conditional_samples_match_enumeration(name):
    torch.manual_seed(5)
    spn = circuit(name)
    k = truncation(spn)
    values = torch.arange(k + 1.0, dtype=torch.float64)
    observed = 1.0
    with torch.no_grad():
        joint = spn(torch.stack([values, torch.full_like(values, observed)], -1)).exp()
        conditional = SPNDistribution(spn).condition(torch.tensor([math.nan, observed], dtype=torch.float64))
        draws = conditional.sample((3000,))
        torch.testing.assert_close(conditional.log_prob(torch.stack([values, torch.full_like(values, observed)], -1)),
                                   (joint / joint.sum()).log(), rtol=1e-9, atol=1e-9)
    counts = torch.bincount(draws[:, 0].long(), minlength=k + 1)
    assert len(counts) == k + 1
    assert goodness_of_fit(counts, joint / joint.sum()) > 1e-3


# --------------------------------------------------------------------------------------------------
# modes, means, variances of the components
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_mode_is_the_argmax(name):
    spn = circuit(name)
    leaf, params = spn.leaf, {k: v.detach() for k, v in spn.leaf_layer.params().items()}
    mode = leaf.mode(params)
    assert bool(leaf.support.check(mode).all())
    if name in DISCRETE:
        grid = torch.arange(truncation(spn) + 1.0, dtype=torch.float64)
    else:
        grid = gauss_legendre(leaf, 400)[0]
    best = leaf.log_prob(grid.view(-1, 1, 1, 1, 1), params).amax(0)
    at_mode = leaf.log_prob(mode, params)
    assert bool((at_mode >= best - (1e-12 if name in DISCRETE else 1e-4)).all())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_mean_and_variance_match_torch_and_brute_force(name):
    spn = circuit(name)
    leaf, params = spn.leaf, {k: v.detach() for k, v in spn.leaf_layer.params().items()}
    law = reference(leaf, params)
    mean, variance = leaf.mean(params), leaf.variance(params)
    torch.testing.assert_close(mean, law.mean.expand(mean.shape), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(variance, law.variance.expand(mean.shape), rtol=1e-9, atol=1e-12)
    if name in DISCRETE:
        grid = torch.arange(truncation(spn) + 1.0, dtype=torch.float64).view(-1, 1, 1, 1, 1)
    else:
        nodes, weights = gauss_legendre(leaf, 400)
        grid = nodes.view(-1, 1, 1, 1, 1)
    pmf = leaf.log_prob(grid, params).exp()
    if name not in DISCRETE:
        pmf = pmf * weights.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close((pmf * grid).sum(0), mean, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close((pmf * (grid - mean).square()).sum(0), variance, rtol=1e-5, atol=1e-8)


# --------------------------------------------------------------------------------------------------
# differentiable draws
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("hard", [True, False])
def test_rsample_through_the_circuit_has_finite_gradients(name, hard):
    torch.manual_seed(6)
    spn = circuit(name, num_features=3)
    d = SPNDistribution(spn, hard=hard, temperature=0.5)
    x = d.rsample((64,))
    loss = x.square().sum()
    if hard:
        assert bool(spn.leaf.support.check(x).all())
        loss = loss + d.log_prob(x.detach()).sum()
    loss.backward()
    grads = {n: p.grad for n, p in spn.named_parameters()}
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads.values()), grads
    leaf_grads = [g for n, g in grads.items() if n.startswith("leaf_layer")]
    assert any(bool((g != 0).any()) for g in leaf_grads if g is not None)


@pytest.mark.parametrize("name", list(FAMILIES))
@pytest.mark.parametrize("coupled", [True, False])
def test_relaxed_draws_have_the_gradient_of_the_mean_in_expectation(name, coupled):
    """``E[∂x̃/∂θ] = ∂E[x]/∂θ``: for pathwise draws since they are reparameterizations, for the Gaussian
    relaxations since ``E[(x − μ)/σ] = 0`` under the exact law."""
    torch.manual_seed(7)
    spec = FAMILIES[name]()
    spn = circuit(name, num_features=1)
    raw = {n: p.detach()[:1, :1, :1, :1].clone().requires_grad_() for n, p in spn.leaf_layer.named_parameters()}
    n = 40_000
    params = {k: v.expand(n) for k, v in spec.constrain({k: v.reshape(()) for k, v in raw.items()}).items()}
    value = spec.sample(params) if coupled else None
    draw = spec.relaxed(params, 1.0, value)
    if value is not None:
        torch.testing.assert_close(draw.detach(), value, rtol=1e-6, atol=1e-9)
    per_draw = torch.autograd.grad(draw.sum(), list(raw.values()))
    estimate = torch.stack([g.reshape(()) / n for g in per_draw])
    exact_mean = spec.mean(spec.constrain({k: v.reshape(()) for k, v in raw.items()}))
    exact = torch.stack([torch.zeros((), dtype=torch.float64) if g is None else g.reshape(())
                         for g in torch.autograd.grad(exact_mean, list(raw.values()), allow_unused=True)])
    # the per-draw gradients' spread, for a 5-sigma tolerance
    spread = []
    for k, v in raw.items():
        single = {kk: vv.reshape(()) for kk, vv in raw.items()}
        single[k] = v.reshape(()).expand(2000).clone().requires_grad_()
        p = {kk: vv.expand(2000) for kk, vv in spec.constrain(single).items()}
        samples = spec.relaxed(p, 1.0, spec.sample(p) if coupled else None)
        (slope,) = torch.autograd.grad(samples.sum(), single[k], allow_unused=True)
        spread.append(torch.zeros((), dtype=torch.float64) if slope is None else slope.std())
    tolerance = 5 * torch.stack(spread) / math.sqrt(n) + 1e-9
    assert bool(((estimate - exact).abs() <= tolerance).all()), (estimate, exact, tolerance)


@pytest.mark.parametrize("name", ["gamma", "beta", "exponential", "lognormal"])
def test_pathwise_coupled_gradient_matches_torch_rsample_in_law(name):
    """The coupled relaxation's gradient of ``E[x²]`` equals torch's ``rsample`` one (both unbiased, same mean)."""
    torch.manual_seed(8)
    spec = FAMILIES[name]()
    spn = circuit(name, num_features=1)
    raw = {n: p.detach()[:1, :1, :1, :1].reshape(()).clone().requires_grad_()
           for n, p in spn.leaf_layer.named_parameters()}
    n = 40_000
    params = {k: v.expand(n) for k, v in spec.constrain(raw).items()}
    ours = spec.relaxed(params, 1.0, spec.sample(params)).square().mean()
    theirs = reference(spec, params).rsample().square().mean()
    g_ours = torch.stack(torch.autograd.grad(ours, list(raw.values()), retain_graph=True))
    g_theirs = torch.stack(torch.autograd.grad(theirs, list(raw.values())))
    torch.testing.assert_close(g_ours, g_theirs, rtol=0.08, atol=0.02)


@pytest.mark.parametrize("name", ["poisson", "geometric", "negative_binomial"])
def test_count_relaxation_is_the_coupled_gaussian(name):
    spec = FAMILIES[name]()
    spn = circuit(name, num_features=2)
    params = spn.leaf_layer.params()
    value = spec.sample({k: v.detach() for k, v in params.items()})
    draw = spec.relaxed(params, 1.0, value)
    torch.testing.assert_close(draw.detach(), value, rtol=1e-9, atol=1e-9)
    mean, std = spec.gaussian_relaxation(params)
    torch.testing.assert_close(mean, spec.mean(params))
    torch.testing.assert_close(std.square(), spec.variance(params))


# --------------------------------------------------------------------------------------------------
# MPE, precision, expectations
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(FAMILIES))
def test_mpe_completes_within_the_support(name):
    spn = circuit(name)
    d = SPNDistribution(spn)
    evidence = d.sample((4,))
    evidence[:, 0] = math.nan
    completion, value = d.mpe_with_log_prob(evidence)
    assert bool(spn.leaf.support.check(completion).all())
    assert bool((completion[:, 1] == evidence[:, 1]).all())
    assert bool(torch.isfinite(value).all()) and bool((value <= d.log_prob(completion) + 1e-9).all())


def test_lognormal_far_from_the_origin_keeps_float32_precision():
    spn = RatSPN(3, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=LogNormal(), seed=0)
    with torch.no_grad():
        spn.leaf_layer.loc.add_(60.0)
        spn.leaf_layer.raw_scale.fill_(-4.0)  # scale ≈ 0.02: (loc / scale)² ≈ 1e7
    x = SPNDistribution(spn).sample((16,))
    exact = spn.double()(x.double())
    spn.float()
    torch.testing.assert_close(spn(x).double(), exact, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("name", ["poisson", "gamma"])
def test_support_sums_refuse_unbounded_or_continuous_supports(name):
    spn = circuit(name)
    params = spn.leaf_layer.params()
    kind = "unbounded discrete" if name == "poisson" else "continuous"
    with pytest.raises(ValueError, match=kind):
        support_log_probs(spn.leaf, params, params[next(iter(params))])
    with pytest.raises(ValueError, match=kind):
        rbf_expectations(spn, torch.ones(2, 2, dtype=torch.float64), [1.0])


def test_mixed_counts_and_proportions_normalize_and_sample():
    """A Mixed leaf of a Poisson and a Beta variable: the placeholder 0 of the other group stays finite."""
    torch.manual_seed(9)
    spn = RatSPN(2, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=Mixed([(Poisson(), 1), (Beta(), 1)]),
                 seed=0).double()
    nodes, weights = gauss_legendre(Beta(), 200)
    counts = torch.arange(40.0, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(counts, nodes, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        total = (spn(grid).exp().view(len(counts), len(nodes)) @ weights).sum()
        assert abs(float(total) - 1) < 1e-8
        d = SPNDistribution(spn)
        x = d.sample((200,))
        assert bool(d.support.check(x).all())
        missing = x.clone()
        missing[:, 1] = math.nan
        assert bool(torch.isfinite(d.log_prob(missing)).all())
    x = SPNDistribution(spn).rsample((16,))
    x.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in spn.parameters() if p.grad is not None)
