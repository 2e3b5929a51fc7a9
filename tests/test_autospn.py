"""``pyro_spn.infer``: the circuit's CDFs and implicit reparameterization, and ``AutoSPN`` as a Pyro autoguide
(flattening, plates, constrained sites, median/quantiles, Predictive, estimators, errors, ELBO on known evidence)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO, TraceGraph_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.autoguide.initialization import init_to_mean
from pyro.optim import Adam, ClippedAdam

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.infer import (
    AutoSPN,
    AutoSPNPosterior,
    StratifiedELBO,
    conditional_log_cdfs,
    default_structure,
    implicit_rsample,
    marginal_log_cdfs,
    marginal_quantiles,
)
from pyro_spn.infer.circuit_cdf import check_circuit, component_log_prob, root_from_leaves
from pyro_spn.leaves import Bernoulli, Normal


@pytest.fixture(autouse=True)
def _seed_clean_param_store_one_thread():
    """Seeds, empties the param store, validates, and runs on one torch thread (small tensors: more threads only
    contend on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    try:
        with pyro.validation_enabled(True):
            yield
    finally:
        pyro.clear_param_store()
        torch.set_num_threads(threads)


def normal_spn(num_features: int, depth: int = 1, seed: int = 1, **kwargs: int) -> RatSPN:
    sizes = {"num_repetitions": 2, "num_sums": 3, "num_leaves": 3, **kwargs}
    return RatSPN(num_features, depth=depth, leaf=Normal(), seed=seed, **sizes)


def grid_2d(extent: float = 8.0, size: int = 601) -> tuple[torch.Tensor, float]:
    """Points ``[size², 2]`` of a square grid and the area of a cell."""
    axis = torch.linspace(-extent, extent, size, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis), float(axis[1] - axis[0]) ** 2


def elbo(model, guide, particles: int = 4000, seed: int = 1) -> float:
    pyro.set_rng_seed(seed)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1).loss(model, guide)
    return -loss


def fit(model, guide, steps: int, lr: float = 0.02, particles: int = 16, elbo_class=Trace_ELBO,
        decay: float = 1.0) -> list[float]:
    """``steps`` SVI steps of Adam (the learning rate multiplied by ``decay`` every step)."""
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "lrd": decay}),
              elbo_class(num_particles=particles, vectorize_particles=True, max_plate_nesting=1))
    return [svi.step() for _ in range(steps)]


# -- the circuit's CDFs ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_features", "depth"), [(1, 1), (2, 1), (3, 2), (5, 2), (5, 3)])
def test_root_from_leaf_densities_is_the_log_likelihood(num_features: int, depth: int) -> None:
    spn = normal_spn(num_features, depth)
    x = torch.randn(6, num_features) * 2
    expected = spn(x)
    assert torch.allclose(root_from_leaves(spn, component_log_prob(spn, x)), expected, atol=1e-4)


@pytest.mark.parametrize(("num_features", "depth"), [(1, 1), (2, 1), (3, 2)])
def test_conditional_cdfs_match_quadrature(num_features: int, depth: int) -> None:
    spn = normal_spn(num_features, depth)
    x = torch.randn(3, num_features)
    log_u = conditional_log_cdfs(spn, x)
    assert log_u.shape == (3, num_features) and bool((log_u <= 1e-6).all())
    axis = torch.linspace(-15.0, 15.0, 6001)
    for n in range(3):
        for d in range(num_features):
            points = x[n].repeat(len(axis), 1)
            points[:, d] = axis
            points[:, d + 1:] = float("nan")  # later variables marginalized
            with torch.no_grad():
                density = spn(points).double().exp()
            expected = (density * (axis <= x[n, d])).sum() / density.sum()
            assert abs(float(log_u[n, d].detach().exp()) - float(expected)) < 2e-3, (n, d)


def test_marginal_cdfs_and_quantiles_invert_each_other() -> None:
    spn = normal_spn(3, depth=2)
    probabilities = torch.tensor([0.05, 0.5, 0.9])
    points = marginal_quantiles(spn, probabilities)
    assert points.shape == (3, 3)
    assert bool((points[1:] > points[:-1]).all())
    assert torch.allclose(marginal_log_cdfs(spn, points).exp(), probabilities[:, None].expand(3, 3), atol=1e-4)
    # and against the empirical marginals of exact samples
    samples = SPNDistribution(spn).sample((10000,))
    empirical = (samples[:, None, :] <= points[None]).float().mean(0)
    assert torch.allclose(empirical, probabilities[:, None].expand(3, 3), atol=0.02)


def test_implicit_gradient_is_the_exact_gradient() -> None:
    """The mean implicit-reparameterization gradient of ``E[f(x)]`` equals the exact gradient (by quadrature) w.r.t.
    every parameter, sum weights included."""
    torch.manual_seed(0)
    spn = normal_spn(2)

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * x[:, 0]) * x[:, 1] + x[:, 1] ** 2

    points, area = grid_2d(size=501)
    exact = (spn(points.float()).exp() * f(points.float())).sum() * area
    expected = torch.autograd.grad(exact, list(spn.parameters()))
    samples = SPNDistribution(spn).sample((30000,))
    x = implicit_rsample(spn, samples)
    assert torch.equal(x, samples)
    estimated = torch.autograd.grad(f(x).mean(), list(spn.parameters()))
    for name, e, g in zip([n for n, _ in spn.named_parameters()], expected, estimated, strict=True):
        assert (e - g).abs().max() < 0.02 + 0.03 * e.abs().max(), name


def test_implicit_rsample_without_gradient_returns_the_samples() -> None:
    spn = normal_spn(2)
    x = SPNDistribution(spn).sample((4,))
    with torch.no_grad():
        assert implicit_rsample(spn, x) is x


def test_check_circuit_names_the_argument() -> None:
    with pytest.raises(TypeError, match="spn must be a pyro_spn.RatSPN over \\(F,\\) with Normal leaves"):
        check_circuit(RatSPN(2, depth=1, num_repetitions=1, num_sums=2, num_leaves=2, leaf=Bernoulli()))


# -- AutoSPN: building, shapes, Pyro's interfaces ----------------------------------------------------------------
def gaussian_model(y: torch.Tensor | None = None) -> None:
    y = torch.tensor([1.0, -0.5]) if y is None else y
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    pyro.sample("y", dist.MultivariateNormal(z, torch.tensor([[0.5, 0.3], [0.3, 0.5]])), obs=y)


def test_default_structure_grows_with_the_latent_dimension() -> None:
    assert default_structure(1)["depth"] == 1 and default_structure(2)["depth"] == 1
    assert default_structure(4)["depth"] == 2 and default_structure(9)["depth"] == 4
    assert default_structure(1000)["depth"] == 4
    assert default_structure(2)["num_repetitions"] == 8 and default_structure(5)["num_repetitions"] == 4


def test_structure_is_overridable_and_the_circuit_is_registered() -> None:
    guide = AutoSPN(gaussian_model, depth=2, num_sums=2, num_leaves=5)
    guide()
    assert guide.structure() == {"depth": 2, "num_repetitions": 8, "num_sums": 2, "num_leaves": 5}
    assert guide.spn.depth == 2 and guide.spn.num_leaves == 5 and guide.spn.event_shape == (2,)
    assert isinstance(guide.get_posterior(), AutoSPNPosterior)
    names = set(pyro.get_param_store().keys())
    assert any(name.startswith("AutoSPN.spn") and name.endswith("leaf_layer.loc") for name in names), names


def test_leaf_components_start_at_prior_draws_or_around_the_initial_location() -> None:
    def model() -> None:
        pyro.sample("scale", dist.LogNormal(1.0, 2.0))  # unconstrained: N(1, 2²)
        pyro.sample("z", dist.Normal(torch.full((2,), -3.0), 0.5).to_event(1))

    guide = AutoSPN(model, num_repetitions=8, num_leaves=16, init_spread=None)
    guide()
    loc = guide.spn.leaf_layer.loc.detach()[0]  # [D, I, R]
    assert loc.shape == (3, 16, 8)
    spread, centre = loc.flatten(1).std(1), loc.flatten(1).mean(1)
    assert abs(float(spread[0]) - 2.0) < 0.5 and abs(float(centre[0]) - 1.0) < 0.5, (spread, centre)
    assert bool((spread[1:] - 0.5).abs().lt(0.15).all()) and bool((centre[1:] + 3.0).abs().lt(0.2).all())
    assert torch.allclose(guide.spn.leaf_layer.params()["scale"].detach(), torch.tensor(0.5))

    pyro.clear_param_store()
    around = AutoSPN(model, init_loc_fn=init_to_mean, init_spread=0.0, init_scale=0.2)
    around()
    loc = around.spn.leaf_layer.loc.detach()[0]
    assert torch.allclose(loc[0], torch.tensor(3.0), atol=1e-4)  # the prior's mean e^(1 + 2²/2), unconstrained
    assert torch.allclose(loc[1:], torch.tensor(-3.0), atol=1e-5)
    assert torch.allclose(around.spn.leaf_layer.params()["scale"].detach(), torch.tensor(0.2))


def test_latent_dimension_one_trains_and_has_quantiles() -> None:
    def model() -> None:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("y", dist.Normal(z, 0.5), obs=torch.tensor(1.0))

    guide = AutoSPN(model, num_repetitions=2, num_sums=4, num_leaves=4)
    losses = fit(model, guide, steps=40, lr=0.05)
    assert guide.latent_dim == 1 and guide.spn.event_shape == (1,)
    assert all(math.isfinite(loss) for loss in losses)
    # the exact posterior is N(0.8, 0.2): its quantiles, after a short fit
    quantiles = guide.quantiles([0.25, 0.5, 0.75])["z"]
    assert quantiles.shape == (3,) and bool((quantiles[1:] > quantiles[:-1]).all())
    assert abs(float(guide.median()["z"]) - 0.8) < 0.25


def test_plates_and_constrained_sites() -> None:
    """Positive and simplex sites, a plate of local latents: values in their supports, the guide's densities include
    the transforms' Jacobians (the ELBO is finite and a short fit improves it), median/quantiles have the sites'
    shapes."""
    data = torch.tensor([0.5, 1.5, 2.5])

    def model(y: torch.Tensor) -> None:
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        weights = pyro.sample("weights", dist.Dirichlet(torch.ones(3)))
        with pyro.plate("data", len(y)):
            loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
            pyro.sample("y", dist.Normal(loc * weights.sum() + weights[0], scale), obs=y)

    guide = AutoSPN(model, num_repetitions=2, num_sums=3, num_leaves=3)
    values = {name: value.detach() for name, value in guide(data).items()}
    assert guide.latent_dim == 1 + 2 + 3  # the simplex loses one dimension unconstrained
    assert values["scale"].shape == () and float(values["scale"]) > 0
    assert values["weights"].shape == (3,) and abs(float(values["weights"].sum()) - 1) < 1e-5
    assert values["loc"].shape == (3,)
    trace = poutine.trace(guide).get_trace(data)
    trace.compute_log_prob()
    assert math.isfinite(float(trace.log_prob_sum().detach()))
    before = elbo(lambda: model(data), lambda: guide(data), particles=500)
    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO(num_particles=8, vectorize_particles=True,
                                                           max_plate_nesting=1))
    for _ in range(30):
        svi.step(data)
    after = elbo(lambda: model(data), lambda: guide(data), particles=500)
    assert after > before, (before, after)
    median = guide.median(data)
    assert median["weights"].shape == (3,) and median["loc"].shape == (3,) and float(median["scale"]) > 0
    quantiles = guide.quantiles([0.1, 0.9], data)
    assert quantiles["loc"].shape == (2, 3) and bool((quantiles["loc"][0] < quantiles["loc"][1]).all())


def test_predictive_draws_posterior_samples() -> None:
    guide = AutoSPN(gaussian_model, num_repetitions=2)
    guide()
    samples = Predictive(gaussian_model, guide=guide, num_samples=50, return_sites=["z", "y"])()
    assert samples["z"].shape == (50, 2)
    assert samples["y"].shape == (50, 2)


@pytest.mark.parametrize("estimator", ["implicit", "score", "straight_through"])
def test_every_estimator_trains_with_exact_samples(estimator: str) -> None:
    guide = AutoSPN(gaussian_model, estimator=estimator, num_repetitions=2, num_sums=3, num_leaves=3)
    guide()
    posterior = guide.get_posterior()
    assert posterior.has_rsample is (estimator != "score")
    expanded = posterior.expand((5,))
    assert isinstance(expanded, AutoSPNPosterior) and expanded.estimator == estimator
    assert expanded.has_rsample is posterior.has_rsample and expanded.batch_shape == (5,)
    start = [p.detach().clone() for p in guide.spn.parameters()]
    losses = fit(gaussian_model, guide, steps=5, elbo_class=TraceGraph_ELBO if estimator == "score" else Trace_ELBO)
    assert all(math.isfinite(loss) for loss in losses)
    assert all(not torch.equal(a, b.detach()) for a, b in zip(start, guide.spn.parameters(), strict=True))


def test_score_posterior_has_no_rsample() -> None:
    guide = AutoSPN(gaussian_model, estimator="score")
    guide()
    with pytest.raises(NotImplementedError, match="not reparameterized"):
        guide.get_posterior().rsample()


def test_implicit_posterior_samples_carry_the_exact_gradient() -> None:
    """The guide's rsample (expanded as in vectorized particles) is the implicit reparameterization."""
    guide = AutoSPN(gaussian_model, num_repetitions=2, num_sums=3, num_leaves=3)
    guide()
    posterior = guide.get_posterior().expand((7,))
    x = posterior.rsample()
    assert x.shape == (7, 2) and x.requires_grad
    x.sum().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in guide.spn.parameters())


@pytest.mark.slow
def test_gaussian_posterior_matches_auto_multivariate_normal() -> None:
    """On a conjugate Gaussian model (log evidence in closed form) AutoSPN's ELBO matches AutoMultivariateNormal's,
    both within a small gap of log p(y)."""
    y = torch.tensor([1.0, -0.5])
    noise = torch.tensor([[0.5, 0.3], [0.3, 0.5]])
    log_evidence = float(dist.MultivariateNormal(torch.zeros(2), torch.eye(2) + noise).log_prob(y))
    mvn = AutoMultivariateNormal(gaussian_model)
    fit(gaussian_model, mvn, steps=300, lr=0.05)
    pyro.clear_param_store()
    spn = AutoSPN(gaussian_model, num_repetitions=2, num_sums=4, num_leaves=4)
    fit(gaussian_model, spn, steps=300, lr=0.05)
    mvn_elbo, spn_elbo = elbo(gaussian_model, mvn), elbo(gaussian_model, spn)
    assert log_evidence - mvn_elbo < 0.05, (log_evidence, mvn_elbo)
    assert log_evidence - spn_elbo < 0.1, (log_evidence, spn_elbo)
    assert abs(spn_elbo - mvn_elbo) < 0.1, (spn_elbo, mvn_elbo)


# -- errors ------------------------------------------------------------------------------------------------------
def test_discrete_latent_site_names_the_model_and_the_expected_support() -> None:
    def model() -> None:
        pyro.sample("c", dist.Categorical(torch.ones(3) / 3))
        pyro.sample("z", dist.Normal(0.0, 1.0))

    guide = AutoSPN(model)
    with pytest.raises(ValueError, match="model: AutoSPN needs every latent site to be continuous; site 'c'.*"
                                         "Expected a continuous support"):
        guide()


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"estimator": "soft"}, ValueError, "estimator must be one of implicit, score, straight_through"),
    ({"depth": 0}, ValueError, "depth"),
    ({"num_sums": 2.5}, TypeError, "num_sums must be an integer"),
    ({"init_scale": 0.0}, ValueError, "init_scale"),
    ({"init_spread": -1.0}, ValueError, "init_spread"),
    ({"temperature": 0.0}, ValueError, "temperature"),
])
def test_bad_arguments_are_named(kwargs: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        AutoSPN(gaussian_model, **kwargs)


def test_model_must_be_callable() -> None:
    with pytest.raises(TypeError, match="model must be a callable"):
        AutoSPN(42)  # type: ignore[arg-type]


def test_quantiles_must_be_probabilities() -> None:
    guide = AutoSPN(gaussian_model)
    with pytest.raises(ValueError, match="quantiles: expected probabilities in \\(0, 1\\)"):
        guide.quantiles([0.5, 1.0])


# -- multimodal posteriors with known evidence (slow) -----------------------------------------------------------
def ring_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    pyro.sample("x", dist.Normal(z.norm(dim=-1), 0.25), obs=torch.tensor(2.0))


def ring_log_joint(z: torch.Tensor) -> torch.Tensor:
    prior = dist.Normal(torch.zeros(2, dtype=z.dtype), 2.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z.norm(dim=-1), 0.25).log_prob(torch.tensor(2.0, dtype=z.dtype))


def mixture_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 3.0).to_event(1))
    pyro.sample("x", dist.Normal(z**2, 0.5).to_event(1), obs=torch.full((2,), 4.0))


def mixture_log_joint(z: torch.Tensor) -> torch.Tensor:
    prior = dist.Normal(0.0, 3.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z**2, 0.5).log_prob(torch.full_like(z, 4.0)).sum(-1)


@pytest.mark.slow
@pytest.mark.parametrize(("model", "log_joint", "steps", "spn_elbo"),
                         [(ring_model, ring_log_joint, 1000, "trace"),
                          (mixture_model, mixture_log_joint, 2000, "stratified"),
                          pytest.param(mixture_model, mixture_log_joint, 2000, "trace", marks=pytest.mark.xfail(
                              reason="Trace_ELBO's pathwise weight gradient reaches 0.62 / 0.37 / 0.32 nat below "
                                     "log p(x) after 1000 / 2000 / 4000 steps: one of the four modes under-covered"))],
                         ids=["ring", "mixture-stratified", "mixture-trace"])
def test_multimodal_posterior_beats_gaussian_guides_and_reaches_the_evidence(model, log_joint, steps: int,
                                                                             spn_elbo: str) -> None:
    """The issue's criterion: a higher ELBO than both Gaussian autoguides and within 0.1 nat of ``log p(x)``
    (quadrature), at the same budget of steps for all three guides (the Gaussians with ``Trace_ELBO``, the circuit
    with ``Trace_ELBO`` or ``StratifiedELBO``, one draw per top-layer child)."""
    points, area = grid_2d(size=1601)
    log_evidence = float(torch.logsumexp(log_joint(points), 0) + math.log(area))
    results = {}
    for name, guide in [("normal", AutoNormal(model)), ("mvn", AutoMultivariateNormal(model)),
                        ("spn", AutoSPN(model))]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if name == "spn" and spn_elbo == "stratified":
            svi = SVI(model, guide, ClippedAdam({"lr": 0.01, "lrd": 0.999}), StratifiedELBO(max_plate_nesting=1))
            for _ in range(steps):
                svi.step()
        else:
            fit(model, guide, steps=steps, lr=0.01, decay=0.999)
        results[name] = elbo(model, guide, particles=20000)
    assert results["spn"] > max(results["normal"], results["mvn"]) + 0.2, results
    assert log_evidence - results["spn"] < 0.1, (log_evidence, results)
