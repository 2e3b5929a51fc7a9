"""Joint circuits over data and extra variables (a class label, Gaussian latents) against brute force.

The labelled circuit has three Binomial(2) data variables and a 3-class label: all 81 joint states are enumerated
and sample frequencies are compared with the exact probabilities (chi², fixed seeds, p > 1e-3).
"""

from __future__ import annotations

import pytest
import torch
from conftest import all_states, spread_out, state_index

from pyro_spn import SPNDistribution
from pyro_spn.joint import JointSPN, MarginalSPNDistribution
from pyro_spn.leaves import Binomial, Categorical, Mixed, Normal

NUM_CLASSES = 3
VALUES = [(0.0, 1.0, 2.0)] * 3  # Binomial(2) data
X_STATES = all_states(VALUES)  # [27, 3]


def labelled(seed: int = 0) -> JointSPN:
    model = JointSPN((3,), Binomial(total_count=2), Categorical(NUM_CLASSES), 1, depth=2, num_repetitions=3,
                     num_sums=3, num_leaves=2, seed=seed).double()
    spread_out(model.spn, seed, scale=2.0)
    return model


def exact_joint(model: JointSPN) -> torch.Tensor:
    """``log p(x, y)`` of every state, ``[27, 3]`` (x in ``X_STATES`` order, y = column)."""
    x = X_STATES.repeat_interleave(NUM_CLASSES, dim=0)
    y = torch.arange(NUM_CLASSES, dtype=torch.float64).repeat(len(X_STATES))[:, None]
    with torch.no_grad():
        return model(x, y).reshape(len(X_STATES), NUM_CLASSES)


def test_layout():
    model = JointSPN((1, 4, 4), Normal(), Categorical(5), 1, depth=2, num_repetitions=2, num_sums=3, num_leaves=2)
    assert model.spn.event_shape == (17,)
    assert isinstance(model.spn.leaf, Mixed) and model.spn.leaf.sizes == (16, 1)
    assert model.data_leaf == Normal() and model.extra_leaf == Categorical(5)
    joint = model.join(torch.zeros(2, 1, 4, 4), torch.ones(2, 1))
    assert joint.shape == (2, 17) and torch.equal(joint[:, -1], torch.ones(2))
    x, extra = model.split(joint)
    assert x.shape == (2, 1, 4, 4) and extra.shape == (2, 1)
    assert torch.isnan(model.join(None, torch.ones(2, 1))[:, :16]).all()


def test_joint_normalizes_and_the_marginal_is_exact():
    model = labelled()
    joint = exact_joint(model)
    assert float(joint.logsumexp((0, 1))) == pytest.approx(0.0, abs=1e-10)
    d = model.distribution()
    assert isinstance(d, MarginalSPNDistribution) and d.event_shape == (3,)
    with torch.no_grad():
        assert torch.allclose(d.log_prob(X_STATES), joint.logsumexp(1), atol=1e-10)
        partial = X_STATES.clone()
        partial[:, 0] = float("nan")  # x_0 missing: summed out
        expected = joint.logsumexp(1).reshape(3, 9).logsumexp(0).repeat(3)
        assert torch.allclose(d.log_prob(partial), expected, atol=1e-10)
        labels = torch.zeros(27, 1, dtype=torch.float64)
        assert torch.allclose(d.joint.log_prob(model.join(X_STATES, labels)), joint[:, 0], atol=1e-12)


def test_classify_is_the_exact_posterior():
    model = labelled(seed=1)
    joint = exact_joint(model)
    with torch.no_grad():
        posterior = model.distribution().classify(X_STATES)
        assert torch.allclose(posterior, joint - joint.logsumexp(1, keepdim=True), atol=1e-10)
        partial = X_STATES[:9].clone()
        partial[:, 2] = float("nan")  # classify from x_0, x_1 only
        marginal = joint[:9].reshape(3, 3, NUM_CLASSES).logsumexp(1)
        expected = (marginal - marginal.logsumexp(1, keepdim=True)).repeat_interleave(3, dim=0)
        assert torch.allclose(model.distribution().classify(partial), expected, atol=1e-10)


@pytest.mark.parametrize("hard", [True, False])
def test_samples_given_the_label_fit_the_exact_conditional(hard, fit):
    model = labelled(seed=2)
    joint = exact_joint(model)
    conditional = (joint - joint.logsumexp(0, keepdim=True)).exp()  # p(x | y), [27, 3]
    torch.manual_seed(0)
    per_class = 3000
    labels = torch.arange(NUM_CLASSES, dtype=torch.float64).repeat_interleave(per_class)[:, None]
    d = model.distribution(temperature=0.5, hard=hard)
    draws = d.sample_given(labels) if hard else d.decode(labels).detach().round().clamp(0, 2)
    assert draws.shape == (NUM_CLASSES * per_class, 3)
    if not hard:
        return  # relaxed draws are not samples of the circuit; their shapes and support are what is checked
    for c in range(NUM_CLASSES):
        counts = torch.bincount(state_index(draws[labels[:, 0] == c], VALUES), minlength=27)
        assert fit(counts, conditional[:, c]) > 1e-3, c


def test_marginal_samples_fit_the_exact_marginal(fit):
    model = labelled(seed=3)
    probs = exact_joint(model).logsumexp(1).exp()
    torch.manual_seed(1)
    x = model.distribution().sample((6000,))
    assert x.shape == (6000, 3)
    assert fit(torch.bincount(state_index(x, VALUES), minlength=27), probs) > 1e-3


def test_encode_is_the_max_product_completion_of_the_latents_and_decode_is_differentiable():
    model = JointSPN((2, 2), Binomial(total_count=4), Normal(), 2, depth=2, num_repetitions=2, num_sums=3,
                     num_leaves=3)
    d = model.distribution(temperature=0.5, hard=True)
    x = torch.tensor([[[0.0, 1.0], [4.0, 2.0]], [[3.0, 3.0], [0.0, 1.0]]])
    z = d.encode(x)
    assert z.shape == (2, 2)
    assert torch.equal(z, d.joint.mpe(model.join(x, None))[:, 4:])
    x_hat = d.decode(z)
    assert x_hat.shape == (2, 2, 2) and x_hat.requires_grad
    assert torch.equal(x_hat, x_hat.round()) and bool(((x_hat >= 0) & (x_hat <= 4)).all())
    x_hat.sum().backward()
    assert model.spn.leaf_layer.g0_logits.grad.abs().sum() > 0
    assert d.reconstruct(x).shape == x.shape


def test_marginal_is_a_pyro_distribution_of_the_data():
    model = JointSPN((3,), Normal(), Normal(), 2, depth=1, num_repetitions=2, num_sums=2, num_leaves=2)
    d = model.distribution()
    assert d.rsample((4,)).shape == (4, 3) and d.sample((2, 5)).shape == (2, 5, 3)
    x = torch.randn(6, 3)
    expected = SPNDistribution(model.spn).log_prob(torch.cat([x, torch.full((6, 2), float("nan"))], 1))
    assert torch.allclose(d.log_prob(x), expected)


def test_argument_errors():
    with pytest.raises(TypeError, match="data_leaf"):
        JointSPN((3,), "binomial", Normal(), 1, depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    with pytest.raises(TypeError, match="extra_leaf"):
        JointSPN((3,), Normal(), Mixed([(Normal(), 1)]), 1, depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    with pytest.raises(ValueError, match="num_extra"):
        JointSPN((3,), Normal(), Normal(), 0, depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    with pytest.raises(ValueError, match="data_event_shape"):
        JointSPN((0,), Normal(), Normal(), 1, depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    model = labelled()
    x, y = X_STATES[:4], torch.tensor([[0.0], [1.0], [2.0], [0.0]], dtype=torch.float64)
    with pytest.raises(ValueError, match="x: expected"):
        model(x[:, :2], y)
    with pytest.raises(ValueError, match="x: entries outside"):
        model(x + 3, y)
    with pytest.raises(ValueError, match="extra: entries outside"):
        model(x, y + 1)
    with pytest.raises(ValueError, match="same N"):
        model(x, y[:3])
    with pytest.raises(ValueError, match="at least one"):
        model.join(None, None)
    with pytest.raises(ValueError, match="classify needs one Categorical"):
        JointSPN((3,), Normal(), Normal(), 1, depth=1, num_repetitions=1, num_sums=1,
                 num_leaves=1).distribution().classify(torch.zeros(2, 3))
