"""``SPNDistribution`` inside Pyro: plates, expand/mask/to_event, Predictive, SVI as guide and as model."""

from __future__ import annotations

import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam

from pyro_spn import ConditionalSPNDistribution, RatSPN, SPNDistribution
from pyro_spn.leaves import Bernoulli, Normal

NAN = float("nan")
F = 4


def make_spn(leaf=None, event_shape=F, seed: int = 0, **kwargs) -> RatSPN:
    structure = dict(depth=1, num_repetitions=2, num_sums=3, num_leaves=3)
    structure.update(kwargs)
    return RatSPN(event_shape, leaf=Normal() if leaf is None else leaf, seed=seed, **structure)


@pytest.fixture(autouse=True)
def _seed_and_clean_param_store():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    with pyro.validation_enabled(True):
        yield
    pyro.clear_param_store()


def traced_log_prob(model, *args, **kwargs):
    trace = poutine.trace(model).get_trace(*args, **kwargs)
    trace.compute_log_prob()
    return trace


def all_binary(n: int) -> torch.Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)))


# -- observed sites in plates ----------------------------------------------------------------------------
def test_observed_in_plate_log_prob_equals_distribution_log_prob():
    spn = make_spn()
    d = SPNDistribution(spn)
    x = torch.randn(7, F)

    def model(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", SPNDistribution(spn), obs=data)

    trace = traced_log_prob(model, x)
    site = trace.nodes["x"]
    assert site["fn"].batch_shape == (7,)
    assert site["log_prob"].shape == (7,)
    expected = d.log_prob(x)
    torch.testing.assert_close(site["log_prob"], expected)
    # and the per-item values are the circuit's own, one row at a time
    torch.testing.assert_close(expected, torch.stack([spn(row[None])[0] for row in x]))
    torch.testing.assert_close(trace.log_prob_sum(), expected.sum())


def test_observed_with_nan_is_marginalized_exactly():
    """NaN entries of an observation are summed out: for Bernoulli leaves, p(x_obs) == Σ_v p(x_obs, x_mis = v)."""
    spn = make_spn(Bernoulli())
    x = all_binary(F)[[0, 5, 9, 14, 15]].clone()
    x[0, 1] = NAN
    x[1, [0, 3]] = NAN
    x[2] = NAN
    x[4, 2] = NAN

    def model(data):
        with pyro.plate("data", data.shape[0]):
            pyro.sample("x", SPNDistribution(spn), obs=data)

    log_prob = traced_log_prob(model, x).nodes["x"]["log_prob"]
    assert log_prob.shape == (5,) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob, SPNDistribution(spn).log_prob(x))

    expected = []
    for row in x:
        missing = torch.isnan(row).nonzero().flatten()
        completions = row.repeat(2 ** len(missing), 1)
        completions[:, missing] = all_binary(len(missing))
        expected.append(torch.logsumexp(spn(completions), 0))
    torch.testing.assert_close(log_prob, torch.stack(expected), atol=1e-5, rtol=1e-5)
    assert log_prob[2].item() == pytest.approx(0.0, abs=1e-5)  # all missing: log 1
    assert log_prob[3].item() < 0  # a complete row is a proper probability


def test_nested_plates_with_expanded_distribution():
    spn = make_spn()
    d = SPNDistribution(spn)
    x = torch.randn(3, 5, F)

    def model(obs=None):
        with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 5, dim=-1):
            return pyro.sample("x", d.expand([3, 5]), obs=obs)

    trace = traced_log_prob(model, x)
    assert trace.nodes["x"]["log_prob"].shape == (3, 5)
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], d.log_prob(x))

    # the plates expand an unexpanded distribution too, and sampling gives one draw per plate cell
    def model_unexpanded():
        with pyro.plate("outer", 3, dim=-2), pyro.plate("inner", 5, dim=-1):
            return pyro.sample("x", d)

    trace = traced_log_prob(model_unexpanded)
    value = trace.nodes["x"]["value"]
    assert value.shape == (3, 5, F)
    assert trace.nodes["x"]["log_prob"].shape == (3, 5)
    torch.testing.assert_close(trace.nodes["x"]["log_prob"], d.log_prob(value))
    assert len(torch.unique(value[..., 0])) == 15  # independent draws, not one draw broadcast


def test_subsampled_plate_scales_log_prob():
    spn = make_spn()
    data = torch.randn(20, F)

    def model():
        with pyro.plate("data", 20, subsample_size=5) as idx:
            pyro.sample("x", SPNDistribution(spn), obs=data[idx])
            return idx

    trace = traced_log_prob(model)
    idx = trace.nodes["_RETURN"]["value"]
    lp = SPNDistribution(spn).log_prob(data[idx])
    torch.testing.assert_close(trace.log_prob_sum(), 4.0 * lp.sum())


# -- expand, mask, to_event, infer_shapes --------------------------------------------------------------
@pytest.mark.parametrize("event_shape", [(F,), (2, 2, 3)])
def test_expand_shapes_and_broadcasting(event_shape):
    spn = make_spn(event_shape=event_shape)
    d = SPNDistribution(spn)
    assert d.batch_shape == () and d.event_shape == event_shape
    e = d.expand([3, 2])
    assert isinstance(e, SPNDistribution)
    assert e.batch_shape == (3, 2) and e.event_shape == event_shape
    assert e.spn is spn and e.hard is d.hard and e.interpolation == d.interpolation
    assert e.sample().shape == (3, 2, *event_shape)
    assert e.sample((5,)).shape == (5, 3, 2, *event_shape)
    r = e.rsample((4,))
    assert r.shape == (4, 3, 2, *event_shape) and r.requires_grad
    assert d.rsample().shape == event_shape

    one = torch.randn(event_shape)
    torch.testing.assert_close(e.log_prob(one), d.log_prob(one).expand(3, 2))
    row = torch.randn(2, *event_shape)  # broadcasts along the first batch dim
    lp = e.log_prob(row)
    assert lp.shape == (3, 2)
    torch.testing.assert_close(lp[1], d.log_prob(row))
    full = torch.randn(4, 1, 1, *event_shape)  # sample dims in front
    assert e.log_prob(full).shape == (4, 3, 2)
    torch.testing.assert_close(e.log_prob(full)[:, 2, 1], d.log_prob(full[:, 0, 0]))
    own = e.sample((2,))
    torch.testing.assert_close(e.log_prob(own), d.log_prob(own))


def test_mask_false_zeroes_log_prob():
    spn = make_spn()
    d = SPNDistribution(spn).expand([6])
    x = torch.randn(6, F)
    assert torch.equal(d.mask(False).log_prob(x), torch.zeros(6))
    mask = torch.tensor([True, False, True, False, False, True])
    torch.testing.assert_close(d.mask(mask).log_prob(x), torch.where(mask, d.log_prob(x), torch.zeros(6)))

    def model():
        with pyro.plate("data", 6), poutine.mask(mask=False):
            pyro.sample("x", SPNDistribution(spn), obs=x)

    assert traced_log_prob(model).log_prob_sum().item() == 0.0


def test_to_event_on_expanded_distribution_sums():
    spn = make_spn()
    d = SPNDistribution(spn)
    e = d.expand([3]).to_event(1)
    assert e.batch_shape == () and e.event_shape == (3, F)
    x = torch.randn(5, 3, F)
    lp = e.log_prob(x)
    assert lp.shape == (5,)
    torch.testing.assert_close(lp, d.log_prob(x).sum(-1))
    assert e.sample((2,)).shape == (2, 3, F)
    assert e.rsample().shape == (3, F)


def test_infer_shapes():
    spn = make_spn()
    d = SPNDistribution(spn)
    assert d.infer_shapes(spn=(F,)) == (torch.Size(), torch.Size([F]))
    assert SPNDistribution.infer_shapes(spn=(2, 3, 4)) == (torch.Size(), torch.Size([2, 3, 4]))
    assert SPNDistribution.infer_shapes(spn=(F,), temperature=()) == ((), (F,))


# -- Predictive ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize("event_shape", [(F,), (2, 2, 3)])
def test_predictive_shapes(parallel, event_shape):
    spn = make_spn(event_shape=event_shape)
    B = 5

    def model(batch_size):
        pyro.module("spn", spn)
        with pyro.plate("data", batch_size):
            return pyro.sample("x", SPNDistribution(spn))

    samples = Predictive(model, num_samples=7, parallel=parallel)(B)
    x = samples["x"]
    assert x.shape == (7, B, *event_shape)
    assert torch.isfinite(x).all()
    flat = x.reshape(7 * B, -1)
    assert len(torch.unique(flat[:, 0])) == 7 * B  # every (sample, item) is its own draw


# -- SPN as a guide: a bimodal posterior -----------------------------------------------------------------
_X_OBS = 4.0
_PRIOR_SCALE = 3.0
_LIK_SCALE = 0.5


def _bimodal_model():
    z = pyro.sample("z", dist.Normal(torch.zeros(2), _PRIOR_SCALE).to_event(1))
    pyro.sample("x", dist.Normal(z**2, _LIK_SCALE).to_event(1), obs=torch.full((2,), _X_OBS))


def _bimodal_log_evidence() -> float:
    """``log p(x)`` by quadrature (the two coordinates are independent)."""
    z = torch.linspace(-8.0, 8.0, 160_001, dtype=torch.float64)
    log_joint = (dist.Normal(0.0, _PRIOR_SCALE).log_prob(z)
                 + dist.Normal(z**2, _LIK_SCALE).log_prob(torch.tensor(_X_OBS, dtype=torch.float64)))
    return 2.0 * (torch.logsumexp(log_joint, 0) + math.log(float(z[1] - z[0]))).item()


def _elbo(guide) -> float:
    pyro.set_rng_seed(12345)
    with torch.no_grad():
        loss = Trace_ELBO(num_particles=4000, vectorize_particles=True, max_plate_nesting=0).loss
        return -loss(_bimodal_model, guide)


def _train(guide, steps: int, lr: float) -> None:
    pyro.set_rng_seed(0)
    elbo = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=0)
    svi = SVI(_bimodal_model, guide, Adam({"lr": lr}), elbo)
    for _ in range(steps):
        svi.step()


def test_spn_guide_captures_bimodal_posterior_better_than_autonormal():
    """z ~ N(0, 3²) in 2-D, x ~ N(z², 0.5²) observed at 4: the posterior has modes at z = ±2 per coordinate.

    A unimodal guide covers one mode per coordinate, so its ELBO is about ``log p(x) − 2 log 2``; a
    mixture guide (the SPN, trained through its straight-through sampler) can reach ``log p(x)``.

    The leaf components start spread over ``[−1.5, 1.5]`` with scale 0.1 (the scale AutoNormal starts
    with): the straight-through estimator is local, it does not move mass from a broad component that
    sits on the likelihood's local minimum at z = 0 to the modes (its weight gradient even has the wrong
    sign there), so components must start on both sides of the barrier.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    try:
        log_evidence = _bimodal_log_evidence()
        steps, lr = 400, 0.01

        spn = RatSPN(2, depth=1, num_repetitions=2, num_sums=4, num_leaves=4, leaf=Normal(), seed=0)
        with torch.no_grad():
            spn.leaf_layer.loc.copy_(torch.linspace(-1.5, 1.5, 4).view(1, 1, 4, 1).expand_as(spn.leaf_layer.loc))
            spn.leaf_layer.raw_scale.fill_(math.log(math.expm1(0.1)))

        def spn_guide():
            pyro.module("spn", spn)
            pyro.sample("z", SPNDistribution(spn, temperature=0.5))

        pyro.clear_param_store()
        _train(spn_guide, steps, lr)
        spn_elbo = _elbo(spn_guide)

        pyro.clear_param_store()
        auto = AutoNormal(_bimodal_model)
        _train(auto, steps, lr)
        auto_elbo = _elbo(auto)

        print(f"log p(x) = {log_evidence:.3f}, SPN guide ELBO = {spn_elbo:.3f}, AutoNormal ELBO = {auto_elbo:.3f}")
        # the ELBO is a lower bound: an SPN guide whose log_prob does not match its samples would break it
        assert spn_elbo <= log_evidence + 0.05
        assert auto_elbo <= log_evidence + 0.05
        # AutoNormal found one mode per coordinate: ≈ 2 log 2 below the evidence
        assert auto_elbo == pytest.approx(log_evidence - 2 * math.log(2), abs=0.25)
        # the SPN guide covers both modes: close to the evidence, well above AutoNormal
        assert spn_elbo > log_evidence - 0.4
        assert spn_elbo > auto_elbo + 0.9

        pyro.set_rng_seed(1)
        with torch.no_grad():
            z = SPNDistribution(spn).sample((20000,))
        positive = (z > 0).float().mean(0)
        assert ((positive > 0.2) & (positive < 0.8)).all(), positive
        near_mode = ((z.abs() - 2.0).abs() < 0.5).float().mean()
        assert near_mode > 0.9  # the mass sits on the modes, not on the barrier between them
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("interpolation", ["unit", "region"])
def test_straight_through_gradient_of_a_linear_objective_matches_exact_gradient(interpolation):
    """The bimodal test above hardly depends on the selection gradient (its components start on both
    sides); here it must be right: for f(z) = a·z, E f = a·mean, whose exact gradient the circuit gives.
    The straight-through estimate (small τ) must point the same way for every parameter group."""
    spn = make_spn()
    a = torch.tensor([1.0, -0.5, 2.0, 0.3])

    def grads(loss):
        spn.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in spn.named_parameters() if n != "leaf_layer.raw_scale"}

    exact = grads((SPNDistribution(spn).mean * a).sum())
    torch.manual_seed(0)
    d = SPNDistribution(spn, temperature=0.3, interpolation=interpolation)
    estimate = grads((d.rsample((20000,)) * a).sum(-1).mean())
    for name, g in exact.items():
        cosine = torch.nn.functional.cosine_similarity(g.flatten(), estimate[name].flatten(), dim=0)
        ratio = estimate[name].norm() / g.norm()
        assert cosine > 0.95, (name, cosine)
        assert 0.6 < ratio < 1.4, (name, ratio)


# -- SPN as the model's likelihood -----------------------------------------------------------------------
def test_svi_trains_spn_as_model_likelihood():
    torch.manual_seed(0)
    data = torch.cat([torch.randn(64, F) * 0.3 + 2.0, torch.randn(64, F) * 0.3 - 2.0])
    spn = make_spn()

    def model(x):
        pyro.module("spn", spn)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", SPNDistribution(spn), obs=x)

    def guide(x):
        pass

    def nll() -> float:
        with torch.no_grad():
            return -SPNDistribution(spn).log_prob(data).sum().item()

    svi = SVI(model, guide, Adam({"lr": 0.05}), Trace_ELBO())
    before = nll()
    # no latent variables: the loss *is* −log p(data)
    assert svi.evaluate_loss(data) == pytest.approx(before, rel=1e-5)
    losses = [svi.step(data) for _ in range(60)]
    after = nll()
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < before - 0.2 * abs(before)
    assert min(losses[-5:]) < losses[0]
    assert svi.evaluate_loss(data) == pytest.approx(after, rel=1e-5)


# -- conditional distributions in plates -----------------------------------------------------------------
def test_conditioned_distribution_in_plate():
    spn = make_spn()
    d = SPNDistribution(spn)
    evidence = torch.randn(6, F)
    evidence[0, 1] = NAN
    evidence[1, [0, 2]] = NAN
    evidence[2] = NAN
    evidence[3:, 3] = NAN
    missing = torch.isnan(evidence)
    c = d.condition(evidence)
    assert isinstance(c, ConditionalSPNDistribution)
    assert c.batch_shape == (6,) and c.event_shape == (F,)

    def model():
        with pyro.plate("evidence", 6):
            return pyro.sample("z", c)

    trace = traced_log_prob(model)
    z = trace.nodes["z"]["value"]
    assert z.shape == (6, F) and torch.isfinite(z).all()
    torch.testing.assert_close(z[~missing], evidence[~missing])  # observed entries are kept
    log_prob = trace.nodes["z"]["log_prob"]
    assert log_prob.shape == (6,) and torch.isfinite(log_prob).all()
    torch.testing.assert_close(log_prob, d.log_prob(z) - d.log_prob(evidence))

    # an outer plate of draws expands the evidence
    def model_repeated():
        with pyro.plate("draws", 3, dim=-2), pyro.plate("evidence", 6, dim=-1):
            return pyro.sample("z", c)

    trace = traced_log_prob(model_repeated)
    z = trace.nodes["z"]["value"]
    assert z.shape == (3, 6, F)
    assert trace.nodes["z"]["log_prob"].shape == (3, 6)
    torch.testing.assert_close(z[:, ~missing], evidence[~missing].expand(3, -1))
    assert not torch.allclose(z[0][missing], z[1][missing])  # fresh draws per outer cell

    # rsample keeps the gradient to the circuit
    r = c.rsample((2,))
    assert r.shape == (2, 6, F)
    r[:, missing].sum().backward()
    assert spn.leaf_layer.loc.grad is not None and spn.leaf_layer.loc.grad.abs().sum() > 0


def test_conditioned_distribution_is_normalized():
    """Σ over completions of exp(log p(x_mis | x_obs)) == 1 (Bernoulli leaves, exhaustive)."""
    spn = make_spn(Bernoulli())
    d = SPNDistribution(spn)
    evidence = torch.tensor([[1.0, NAN, 0.0, NAN], [NAN, NAN, NAN, 1.0]])
    c = d.condition(evidence)
    values = all_binary(F)[:, None, :].expand(-1, 2, -1)  # [16, 2, F], observed entries are ignored
    log_prob = c.log_prob(values)
    assert log_prob.shape == (16, 2)
    # each completion is counted once per distinct setting of the missing entries
    for b, ev in enumerate(evidence):
        observed = ~torch.isnan(ev)
        consistent = (all_binary(F)[:, observed] == ev[observed]).all(-1)
        assert torch.logsumexp(log_prob[consistent, b], 0).item() == pytest.approx(0.0, abs=1e-5)


def test_log_prob_keeps_every_gradient_and_the_provenance_of_a_tracked_value():
    from pyro.ops.provenance import get_provenance, track_provenance

    spn = RatSPN((2,), depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=Normal())
    d = SPNDistribution(spn)
    value = torch.randn(4, 2)
    tracked = d.log_prob(track_provenance(value, frozenset({"site"})))
    assert get_provenance(tracked) == frozenset({"site"})
    tracked.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in spn.parameters())
    given = d.condition(torch.tensor([[0.5, float("nan")]]))
    assert get_provenance(given.log_prob(track_provenance(value[:1], frozenset({"z"})))) == frozenset({"z"})
