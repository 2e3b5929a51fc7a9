"""Amortized circuits: ``SPNDistribution(spn, flat_parameters=θ)`` with ``θ [*batch_shape, P]``.

Every batch element has its own (spread-out, different) parameters. Checked per element against brute-force
enumeration (normalization, marginals, conditionals, MPE), against the same circuits evaluated one by one, sampling
against exact probabilities (goodness of fit), and gradients reaching ``θ`` (each element's only from its own loss).
"""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import all_states, goodness_of_fit, state_index, support_values
from torch import nn

from pyro_spn import RatSPN, SPNDistribution, batching
from pyro_spn.estimators import ESTIMATORS, RBFKernel, expectation, rbf_mmd2
from pyro_spn.leaves import Bernoulli, Categorical, Normal

BATCH = 3


def _thetas(spn: RatSPN, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """``[batch, P]`` flat parameters: the circuit's own plus a different large perturbation per element."""
    generator = torch.Generator().manual_seed(seed)
    base = spn.flatten_parameters().detach()
    noise = torch.randn((batch, base.numel()), generator=generator, dtype=base.dtype)
    return (base + 1.5 * noise).requires_grad_()


def _circuit_of(spn: RatSPN, theta: torch.Tensor) -> RatSPN:
    """A copy of ``spn`` whose own parameters are the flat vector ``theta [P]``."""
    own = copy.deepcopy(spn)
    with torch.no_grad():
        for name, value in own.unflatten_parameters(theta.detach()).items():
            own.get_parameter(name).copy_(value)
    return own


@pytest.fixture
def bernoulli(make_circuit) -> tuple[RatSPN, torch.Tensor]:
    spn = make_circuit(Bernoulli(), 4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2)
    return spn, _thetas(spn)


# -- the flat layout --------------------------------------------------------------------------------------------
def test_flat_layout_round_trip(make_circuit):
    spn = make_circuit(Normal(), 5)
    layout = spn.flat_parameter_layout
    assert [part.name for part in layout] == [name for name, _ in spn.named_parameters()]
    assert spn.flat_parameter_size == sum(part.size for part in layout) == sum(p.numel() for p in spn.parameters())
    assert layout[0].offset == 0
    assert all(a.offset + a.size == b.offset for a, b in zip(layout, layout[1:], strict=False))
    flat = spn.flatten_parameters()
    for name, value in spn.unflatten_parameters(flat).items():
        assert torch.equal(value, spn.get_parameter(name))
    batched = spn.unflatten_parameters(flat.expand(2, 3, -1))
    assert all(v.shape[:2] == (2, 3) for v in batched.values())


def test_without_flat_parameters_nothing_changes(make_circuit):
    spn = make_circuit(Normal(), 4)
    d = SPNDistribution(spn)
    assert d.batch_shape == () and not d.amortized and d.flat_parameters is None
    x = torch.randn(6, 4, dtype=torch.float64)
    theta = spn.flatten_parameters()[None]
    same = SPNDistribution(spn, flat_parameters=theta)
    assert torch.allclose(same.log_prob(x[:, None]), d.log_prob(x)[:, None], atol=1e-12)


@pytest.mark.parametrize("bad, error, match", [
    (torch.zeros(3, 7), ValueError, r"flat_parameters: expected shape \[\*batch_shape, \d+\]"),
    (torch.zeros(()), ValueError, "flat_parameters"),
    (torch.zeros(3, 5, dtype=torch.long), TypeError, "flat_parameters must be a floating-point"),
    ([0.0, 1.0], TypeError, "flat_parameters must be a floating-point"),
])
def test_bad_flat_parameters_are_named(make_circuit, bad, error, match):
    spn = make_circuit(Normal(), 4)
    with pytest.raises(error, match=match):
        SPNDistribution(spn, flat_parameters=bad)


# -- brute force, per element ------------------------------------------------------------------------------------
def test_normalized_per_element(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    states = all_states([[0.0, 1.0]] * 4)  # [16, 4]
    log_p = d.log_prob(states[:, None])  # [16, B]
    assert log_p.shape == (16, BATCH)
    assert torch.allclose(log_p.logsumexp(0), torch.zeros(BATCH, dtype=torch.float64), atol=1e-10)
    # the elements really differ
    assert (log_p[:, 0] - log_p[:, 1]).abs().max() > 0.1


def test_marginals_and_conditionals_per_element(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    states = all_states([[0.0, 1.0]] * 4)
    joint = d.log_prob(states[:, None])  # [16, B]
    evidence = torch.tensor([[1.0, float("nan"), 0.0, float("nan")]] * BATCH, dtype=torch.float64)
    matches = (states[:, 0] == 1) & (states[:, 2] == 0)
    marginal = joint[matches].logsumexp(0)
    assert torch.allclose(d.log_prob(evidence), marginal, atol=1e-10)
    conditional = d.condition(evidence)
    assert conditional.batch_shape == (BATCH,)
    completions = states[matches][:, None].expand(-1, BATCH, -1)
    expected = joint[matches] - marginal
    assert torch.allclose(conditional.log_prob(completions), expected, atol=1e-10)
    assert torch.allclose(conditional.log_prob(completions).logsumexp(0), torch.zeros(BATCH, dtype=torch.float64),
                          atol=1e-10)


def test_mpe_per_element_is_the_one_by_one_completion(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    evidence = torch.full((BATCH, 4), float("nan"), dtype=torch.float64)
    evidence[:, 0] = 1.0
    completion, value = d.mpe_with_log_prob(evidence)
    for b in range(BATCH):
        own_completion, own_value = SPNDistribution(_circuit_of(spn, theta[b])).mpe_with_log_prob(evidence[b])
        assert torch.equal(completion[b], own_completion)
        assert torch.allclose(value[b], own_value, atol=1e-10)
        assert value[b] <= d.log_prob(completion)[b] + 1e-10  # a lower bound of the completion's log-density


# -- a batch equals the circuits one by one ----------------------------------------------------------------------
@pytest.mark.parametrize("leaf", [Normal(), Categorical(num_categories=3)])
def test_batch_equals_one_by_one(make_circuit, leaf):
    spn = make_circuit(leaf, 5, depth=2, num_repetitions=3, num_sums=2, num_leaves=3)
    theta = _thetas(spn, seed=1)
    d = SPNDistribution(spn, flat_parameters=theta)
    generator = torch.Generator().manual_seed(0)
    if isinstance(leaf, Normal):
        x = torch.randn((7, BATCH, 5), generator=generator, dtype=torch.float64)
    else:
        x = torch.randint(0, 3, (7, BATCH, 5), generator=generator).double()
    evidence = x[0].clone()
    evidence[:, 1:3] = float("nan")
    log_p, mean, variance = d.log_prob(x), d.mean, d.variance
    conditional = d.condition(evidence)
    conditional_log_p = conditional.log_prob(x)
    for b in range(BATCH):
        own = SPNDistribution(_circuit_of(spn, theta[b]))
        assert torch.allclose(log_p[:, b], own.log_prob(x[:, b]), atol=1e-9)
        assert torch.allclose(mean[b], own.mean, atol=1e-9)
        assert torch.allclose(variance[b], own.variance, atol=1e-9)
        own_conditional = own.condition(evidence[b])
        assert torch.allclose(conditional_log_p[:, b], own_conditional.log_prob(x[:, b]), atol=1e-9)
        assert torch.allclose(conditional.mean[b], own_conditional.mean, atol=1e-9)
        assert torch.allclose(conditional.variance[b], own_conditional.variance, atol=1e-9)


def test_expand_plates_and_infer_shapes(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    wide = d.expand((2, BATCH))
    assert wide.batch_shape == (2, BATCH) and wide.flat_parameters.shape == (2, BATCH, spn.flat_parameter_size)
    x = torch.bernoulli(torch.full((2, BATCH, 4), 0.5, dtype=torch.float64))
    assert torch.allclose(wide.log_prob(x), d.log_prob(x), atol=1e-12)
    assert wide.sample().shape == (2, BATCH, 4)
    assert SPNDistribution.infer_shapes(spn=(4,), flat_parameters=(2, BATCH, spn.flat_parameter_size)) == \
        ((2, BATCH), (4,))
    with pyro.plate("data", BATCH):
        trace = pyro.poutine.trace(lambda: pyro.sample("x", d, obs=x[0])).get_trace()
    trace.compute_log_prob()
    assert torch.allclose(trace.nodes["x"]["log_prob"], d.log_prob(x[0]))
    with pytest.raises(ValueError, match="covariance_matrix: not available for an amortized circuit"):
        _ = d.covariance_matrix
    evidence = torch.tensor([1.0, float("nan"), 0.0, float("nan")], dtype=torch.float64)
    conditional = d.condition(evidence)  # one evidence for every element: batch_shape from the parameters
    assert conditional.batch_shape == (BATCH,)
    wide_conditional = conditional.expand((2, BATCH))
    assert wide_conditional.sample().shape == (2, BATCH, 4)
    completions = torch.tensor([[1.0, a, 0.0, b] for a in (0.0, 1.0) for b in (0.0, 1.0)], dtype=torch.float64)
    log_p = wide_conditional.log_prob(completions[:, None, None])  # [4, 2, B]
    assert torch.allclose(log_p.logsumexp(0), torch.zeros(2, BATCH, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(log_p[:, 0], conditional.log_prob(completions[:, None]))


def test_chunked_rows_give_the_same_values(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    x = torch.bernoulli(torch.full((50, BATCH, 4), 0.5, dtype=torch.float64))
    x[::3, :, 1] = float("nan")
    whole, whole_mpe = d.log_prob(x), d.mpe(x)
    with batching.memory_budget(20_000):  # a few rows per chunk
        assert batching.chunk_rows(batching.amortized_row_bytes(spn)) < 50
        assert torch.allclose(d.log_prob(x), whole, atol=1e-12)
        assert torch.equal(d.mpe(x), whole_mpe)
        d.log_prob(x).sum().backward()
    assert theta.grad.abs().sum() > 0


# -- sampling against exact probabilities --------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sample", "rsample"])
def test_samples_fit_each_element(bernoulli, method):
    spn, theta = bernoulli
    torch.manual_seed(0)
    d = SPNDistribution(spn, flat_parameters=theta)  # hard=True: rsample's values are exact draws
    values = [support_values(spn.leaf)] * 4
    probs = d.log_prob(all_states(values)[:, None]).exp().detach()  # [16, B]
    draws = getattr(d, method)((4000,)).detach()  # [4000, B, 4]
    for b in range(BATCH):
        counts = torch.bincount(state_index(draws[:, b], values), minlength=16)
        assert goodness_of_fit(counts, probs[:, b]) > 1e-3


def test_conditional_samples_fit_each_element(bernoulli):
    spn, theta = bernoulli
    torch.manual_seed(1)
    d = SPNDistribution(spn, flat_parameters=theta)
    evidence = torch.tensor([[float("nan"), 1.0, float("nan"), 0.0]] * BATCH, dtype=torch.float64)
    conditional = d.condition(evidence)
    values = [[0.0, 1.0], [1.0], [0.0, 1.0], [0.0]]
    completions = all_states(values)  # [4, 4]
    probs = conditional.log_prob(completions[:, None]).exp().detach()  # [4, B]
    draws = conditional.sample((3000,))
    assert torch.equal(draws[..., 1], torch.ones(3000, BATCH, dtype=torch.float64))
    for b in range(BATCH):
        counts = torch.bincount(state_index(draws[:, b], values), minlength=4)
        assert goodness_of_fit(counts, probs[:, b]) > 1e-3


@pytest.mark.parametrize("method, kwargs", [("sample", {}), ("rsample", {"hard": True}), ("mpe", {})])
def test_same_noise_same_values_as_the_shared_circuit(make_circuit, method, kwargs):
    """Every row under the circuit's own parameters: the per-row paths draw what the shared fast paths draw, and
    (Bernoulli leaves, whose straight-through gradient draws the other components in the forward) the gradients
    summed over the rows are the circuit's."""
    spn = make_circuit(Bernoulli(), 5, depth=2, num_repetitions=3, num_sums=3, num_leaves=2)
    theta = spn.flatten_parameters().detach().expand(40, -1).clone().requires_grad_()
    shared, amortized = SPNDistribution(spn, **kwargs), SPNDistribution(spn, flat_parameters=theta, **kwargs)
    if method == "mpe":
        evidence = torch.bernoulli(torch.full((40, 5), 0.5, dtype=torch.float64))
        evidence[:, ::2] = float("nan")
        assert torch.equal(shared.mpe(evidence), amortized.mpe(evidence))
        return
    torch.manual_seed(7)
    expected = getattr(shared, method)((40,))
    torch.manual_seed(7)
    drawn = getattr(amortized, method)()
    assert torch.equal(drawn, expected)
    if method == "rsample":
        weights = torch.linspace(-1, 1, 5, dtype=torch.float64)
        (expected * weights).sum().backward()
        (drawn * weights).sum().backward()
        own = torch.cat([p.grad.reshape(-1) for p in spn.parameters()])
        assert torch.allclose(theta.grad.sum(0), own, atol=1e-10)


# -- gradients ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hard", [True, False])
@pytest.mark.parametrize("interpolation", ["unit", "region"])
@pytest.mark.parametrize("evidence", [False, True])
def test_rsample_gradients_reach_only_their_element(make_circuit, hard, interpolation, evidence):
    spn = make_circuit(Normal(), 4, depth=2, num_repetitions=2, num_sums=2, num_leaves=2)
    theta = _thetas(spn)
    d = SPNDistribution(spn, flat_parameters=theta, hard=hard, interpolation=interpolation, temperature=0.7)
    source = d.condition(torch.tensor([[0.5, float("nan"), float("nan"), -1.0]] * BATCH)) if evidence else d
    draws = source.rsample((5,))
    assert draws.shape == (5, BATCH, 4)
    draws[:, 1].square().sum().backward()
    assert theta.grad[1].abs().sum() > 0
    assert theta.grad[0].abs().sum() == 0 and theta.grad[2].abs().sum() == 0
    assert all(p.grad is None for p in spn.parameters())  # the circuit's own parameters are not used


def test_log_prob_gradient_matches_one_by_one(bernoulli):
    spn, theta = bernoulli
    x = torch.bernoulli(torch.full((6, BATCH, 4), 0.4, dtype=torch.float64))
    SPNDistribution(spn, flat_parameters=theta).log_prob(x).sum().backward()
    for b in range(BATCH):
        own = _circuit_of(spn, theta[b])
        SPNDistribution(own).log_prob(x[:, b]).sum().backward()
        assert torch.allclose(theta.grad[b], torch.cat([p.grad.reshape(-1) for p in own.parameters()]), atol=1e-9)


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_estimators_per_element(bernoulli, estimator):
    spn, theta = bernoulli
    torch.manual_seed(2)
    d = SPNDistribution(spn, flat_parameters=theta)
    kernel = RBFKernel(torch.bernoulli(torch.full((5, 4), 0.5, dtype=torch.float64)), bandwidth=1.0)
    expectation(d, kernel, 16, estimator).backward()
    assert theta.grad.abs().sum() > 0
    expected = kernel.expected(d)  # [B, M]
    for b in range(BATCH):
        assert torch.allclose(expected[b], kernel.expected(SPNDistribution(_circuit_of(spn, theta[b]))), atol=1e-10)


def test_exact_mmd_is_the_mean_over_elements(bernoulli):
    spn, theta = bernoulli
    d = SPNDistribution(spn, flat_parameters=theta)
    data = torch.bernoulli(torch.full((6, 4), 0.5, dtype=torch.float64))
    torch.manual_seed(3)
    estimate = torch.stack([rbf_mmd2(d, data, (1.0,), 2000) for _ in range(3)]).mean()
    exact = []
    for b in range(BATCH):
        own = SPNDistribution(_circuit_of(spn, theta[b]))
        states = all_states([[0.0, 1.0]] * 4)
        p = own.log_prob(states).exp().detach()
        k = torch.exp(-torch.cdist(states, states).square() / 2)
        cross = torch.exp(-torch.cdist(states, data).square() / 2)
        within = torch.exp(-torch.cdist(data, data).square() / 2)
        off = ~torch.eye(6, dtype=torch.bool)
        exact.append(p @ k @ p - 2 * (p @ cross).mean() + within[off].mean())
    assert abs(float(estimate.detach()) - float(torch.stack(exact).mean())) < 0.01


# -- a conditional density trained with Pyro --------------------------------------------------------------------------
def test_conditional_density_trains_with_svi():
    torch.manual_seed(0)
    spn = RatSPN(1, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=Normal())
    head = nn.Linear(1, spn.flat_parameter_size)
    x = torch.rand(256, 1) * 2 - 1
    y = torch.where(torch.rand(256, 1) < 0.5, x, -x) + 0.05 * torch.randn(256, 1)  # two branches: multimodal

    def model(x: torch.Tensor, y: torch.Tensor) -> None:
        pyro.module("head", head)
        with pyro.plate("data", len(x)):
            pyro.sample("y", SPNDistribution(spn, flat_parameters=head(x)), obs=y)

    pyro.clear_param_store()
    svi = pyro.infer.SVI(model, lambda x, y: None, pyro.optim.Adam({"lr": 0.03}), pyro.infer.Trace_ELBO())
    losses = [svi.step(x, y) / len(x) for _ in range(150)]
    assert losses[-1] < losses[0] - 0.5
    gaussian = dist.Normal(0.0, y.std()).log_prob(y).mean()
    assert -losses[-1] > float(gaussian) + 0.3  # far better than one Gaussian around the mean
