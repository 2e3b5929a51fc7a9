"""``StratifiedELBO`` and the top-layer children behind it: the circuit as a mixture of its top layer's children,
exact draws and conditional CDFs of each child, the unbiased gradient of the stratified ELBO (against quadrature),
and SVI with it on a model with four separated posterior modes."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI
from pyro.infer.autoguide import AutoNormal
from pyro.optim import ClippedAdam

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.infer import AutoSPN, StratifiedELBO
from pyro_spn.infer.circuit_cdf import (
    component_log_prob,
    conditional_log_cdfs,
    conditional_log_tails,
    implicit_rsample,
    top_children,
    top_inputs_from_leaves,
)
from pyro_spn.infer.stratified import child_samples
from pyro_spn.leaves import Normal


@pytest.fixture(autouse=True)
def _seed_clean_param_store_one_thread():
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


def normal_spn(num_features: int, depth: int = 1, seed: int = 1) -> RatSPN:
    return RatSPN(num_features, depth=depth, leaf=Normal(), seed=seed, num_repetitions=2, num_sums=3, num_leaves=3)


def child_log_prob(spn: RatSPN, leaf_values: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
    """``[N, C]``: every child's log-value at every row of leaf values ``[N, F, I, R]``."""
    halves = top_inputs_from_leaves(spn, leaf_values)  # [N, R, 2, K]
    repetition, first, second = children.unbind(1)
    return halves[:, repetition, 0, first] + halves[:, repetition, 1, second]


@pytest.mark.parametrize(("num_features", "depth"), [(1, 1), (2, 1), (4, 2), (5, 3)])
def test_the_circuit_is_the_mixture_of_its_top_children(num_features: int, depth: int) -> None:
    spn = normal_spn(num_features, depth)
    log_weights, children = top_children(spn)
    assert children.shape == (spn.num_repetitions * spn.einsum_layers[-1].num_inputs ** 2, 3)
    assert torch.allclose(log_weights.logsumexp(0), torch.zeros(()), atol=1e-5)
    x = torch.randn(5, num_features) * 2
    mixture = (log_weights + child_log_prob(spn, component_log_prob(spn, x), children)).logsumexp(1)
    assert torch.allclose(mixture, spn(x), atol=1e-4)


def test_child_samples_follow_each_child() -> None:
    """Depth 1: a child is the product of two leaf components, so its draws are Normal with their locations and
    scales."""
    spn = normal_spn(2)
    _, children = top_children(spn)
    draws = child_samples(spn, children, 4000)  # [S, C, 2]
    assert draws.shape == (4000, len(children), 2) and not draws.requires_grad
    params = spn.leaf_layer.params()
    loc, scale = params["loc"][0].detach(), params["scale"][0].detach()  # [F, I, R]
    # variable f sits in the first or second half of repetition r
    slots = spn.leaf_layer.leaf_slots  # [R, L=2, M]
    for c, (r, i, j) in enumerate(children.tolist()):
        for half, unit in ((0, i), (1, j)):
            for f in slots[r, half].tolist():
                if f < 2:
                    column = draws[:, c, f]
                    assert abs(float(column.mean() - loc[f, unit, r])) < 5 * float(scale[f, unit, r]) / 60
                    assert abs(float(column.std() / scale[f, unit, r]) - 1) < 0.06


def test_child_samples_mixed_by_the_weights_follow_the_circuit() -> None:
    """Deeper circuits: children drawn in proportion to their weights give the circuit's law (mean and covariance
    against the exact moments)."""
    torch.manual_seed(0)
    spn = normal_spn(4, depth=2)
    log_weights, children = top_children(spn)
    draws = child_samples(spn, children, 400)  # [S, C, 4]
    picks = torch.multinomial(log_weights.exp().detach(), 400 * 20, replacement=True)
    x = draws[torch.randint(400, (len(picks),)), picks]
    distribution = SPNDistribution(spn)
    assert torch.allclose(x.mean(0), distribution.mean.detach(), atol=0.1)
    assert torch.allclose(x.var(0), distribution.variance.detach(), rtol=0.1)


@pytest.mark.parametrize(("num_features", "depth"), [(2, 1), (3, 2)])
def test_child_conditional_cdfs_match_quadrature(num_features: int, depth: int) -> None:
    spn = normal_spn(num_features, depth)
    _, children = top_children(spn)
    picked = children[torch.tensor([0, 5, len(children) - 1])]
    x = torch.randn(3, num_features)
    log_cdf, log_survival = conditional_log_tails(spn, x, picked)
    assert torch.allclose(log_cdf.exp() + log_survival.exp(), torch.ones(3, num_features), atol=1e-5)
    axis = torch.linspace(-15.0, 15.0, 6001)
    for n in range(3):
        for d in range(num_features):
            points = x[n].repeat(len(axis), 1)
            points[:, d] = axis
            leaves = component_log_prob(spn, points)
            leaves[:, d + 1:] = 0.0  # later variables marginalized
            with torch.no_grad():
                density = child_log_prob(spn, leaves, picked[n:n + 1])[:, 0].double().exp()
            expected = (density * (axis <= x[n, d])).sum() / density.sum()
            assert abs(float(log_cdf[n, d].detach().exp()) - float(expected)) < 2e-3, (n, d)
    # without children: the circuit's own conditionals
    assert torch.allclose(conditional_log_tails(spn, x)[0], conditional_log_cdfs(spn, x))


def test_child_implicit_gradient_is_the_exact_gradient() -> None:
    """Per child, the mean implicit gradient of ``E_{q_c}[f]`` equals the exact gradient by quadrature, w.r.t.
    every parameter (inner sum weights of a depth-2 circuit included)."""
    torch.manual_seed(0)
    spn = normal_spn(2, depth=1)
    _, children = top_children(spn)
    child = children[4:5]

    def f(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(2 * x[:, 0]) * x[:, 1] + x[:, 1] ** 2

    axis = torch.linspace(-8.0, 8.0, 501, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    area = float(axis[1] - axis[0]) ** 2
    density = child_log_prob(spn, component_log_prob(spn, points.float()), child)[:, 0].exp()
    exact = (density * f(points.float())).sum() * area
    parameters = [p for name, p in spn.named_parameters() if name.startswith("leaf_layer")]
    expected = torch.autograd.grad(exact, parameters)
    draws = child_samples(spn, child, 30000)[:, 0]
    x = implicit_rsample(spn, draws, child.expand(len(draws), 3))
    assert torch.equal(x, draws)
    estimated = torch.autograd.grad(f(x).mean(), parameters)
    for e, g in zip(expected, estimated, strict=True):
        assert (e - g).abs().max() < 0.02 + 0.03 * e.abs().max()


# -- the ELBO ---------------------------------------------------------------------------------------------------
def banana_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    pyro.sample("x", dist.Normal(z[..., 0] ** 2 + z[..., 1], 0.5), obs=torch.tensor(1.0))


def banana_log_joint(z: torch.Tensor) -> torch.Tensor:
    prior = dist.Normal(torch.zeros(2, dtype=z.dtype), 2.0).log_prob(z).sum(-1)
    return prior + dist.Normal(z[..., 0] ** 2 + z[..., 1], 0.5).log_prob(torch.tensor(1.0, dtype=z.dtype))


def small_guide() -> AutoSPN:
    guide = AutoSPN(banana_model, num_repetitions=2, num_sums=2, num_leaves=3, init_scale=0.8)
    guide()
    return guide


def quadrature_elbo(guide: AutoSPN) -> torch.Tensor:
    """``∫ q (log p − log q)`` on a fine grid, differentiable w.r.t. the guide's circuit."""
    axis = torch.linspace(-9.0, 9.0, 721, dtype=torch.float64)
    points = torch.cartesian_prod(axis, axis)
    area = float(axis[1] - axis[0]) ** 2
    log_q = guide.spn(points.float()).double()
    return (log_q.exp() * (banana_log_joint(points) - log_q)).sum() * area


def test_stratified_elbo_value_and_gradient_are_unbiased() -> None:
    """The mean of many stratified estimates equals the quadrature ELBO and its gradient w.r.t. every parameter
    (sum weights included), within a few standard errors."""
    guide = small_guide()
    parameters = list(guide.spn.parameters())
    exact = quadrature_elbo(guide)
    expected = torch.autograd.grad(exact, parameters)
    elbo = StratifiedELBO(num_particles=2, max_plate_nesting=0)
    values, gradients = [], []
    for _ in range(150):
        loss = elbo.differentiable_loss(banana_model, guide)
        values.append(-float(loss.detach()))
        gradients.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(-loss, parameters)]))
    value = torch.tensor(values, dtype=torch.float64)
    assert abs(float(value.mean() - exact.detach())) < 4 * float(value.std() / math.sqrt(len(values))) + 1e-3
    stacked = torch.stack(gradients).double()
    mean, error = stacked.mean(0), stacked.std(0) / math.sqrt(len(gradients))
    target = torch.cat([g.reshape(-1) for g in expected]).double()
    z_scores = (mean - target) / (error + 1e-3 + 0.01 * target.abs())
    assert float(z_scores.abs().max()) < 5, z_scores


def test_loss_is_the_negative_elbo_and_trains_with_svi() -> None:
    """``loss`` (no gradient, the plate nesting guessed) estimates the quadrature ELBO; SVI steps lower it."""
    guide = small_guide()
    exact = float(quadrature_elbo(guide))
    losses = torch.tensor([StratifiedELBO(num_particles=50).loss(banana_model, guide) for _ in range(20)])
    assert abs(float(losses.mean()) + exact) < 4 * float(losses.std()) / math.sqrt(len(losses)) + 1e-3
    svi = SVI(banana_model, guide, ClippedAdam({"lr": 0.02}), StratifiedELBO(num_particles=2))
    losses = [svi.step() for _ in range(60)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-10:]) < sum(losses[:10])


def plated_model(data: torch.Tensor) -> None:
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("groups", 3):
        loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
        with pyro.plate("points", data.shape[0], dim=-2):
            pyro.sample("obs", dist.Normal(loc, scale), obs=data)


def test_plates_and_constrained_sites() -> None:
    data = torch.randn(4, 3) + torch.tensor([1.0, -1.0, 0.5])
    guide = AutoSPN(plated_model, num_repetitions=2, num_sums=2, num_leaves=2)
    svi = SVI(plated_model, guide, ClippedAdam({"lr": 0.02}), StratifiedELBO())
    losses = [svi.step(data) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    assert float(guide.median(data)["scale"]) > 0


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="num_particles"):
        StratifiedELBO(num_particles=0)
    with pytest.raises(TypeError, match="guide must be a pyro_spn.infer.AutoSPN with estimator 'implicit'"):
        StratifiedELBO().loss(banana_model, AutoNormal(banana_model))
    with pytest.raises(TypeError, match="guide must be"):
        StratifiedELBO().loss(banana_model, AutoSPN(banana_model, estimator="score"))
