"""The class-conditional circuit against brute force on a tiny circuit, and trained on digits.

The tiny circuit has three Binomial(2) data variables and a 3-class variable: all 81 joint states are
enumerated, and sample frequencies are compared with the exact probabilities by a chi-square test (fixed seeds,
p > 1e-3).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy import stats
from sklearn.datasets import load_digits

from pyro_spn import SPNDistribution
from pyro_spn.class_conditional import ClassConditionalSPN, build_class_conditional_spn, fit_class_conditional
from pyro_spn.leaves import Binomial, Categorical, Mixed, Normal

NUM_CLASSES = 3
VALUES = (0.0, 1.0, 2.0)  # Binomial(2)
X_STATES = torch.tensor(list(itertools.product(VALUES, repeat=3)), dtype=torch.float64)  # [27, 3]


def tiny_model(seed: int = 0) -> ClassConditionalSPN:
    """A float64 model whose parameters are pushed far from their near-uniform init (so that mistakes show)."""
    model = ClassConditionalSPN((3,), NUM_CLASSES, Binomial(total_count=2), depth=2, num_repetitions=3,
                                num_sums=3, num_leaves=2, seed=seed).to(torch.float64)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        model.spn.root.logits.copy_(1.5 * torch.randn(model.spn.root.logits.shape, generator=g, dtype=torch.float64))
        for layer in model.spn.inner_layers:
            layer.logits.mul_(3.0)
        for leaf in model.spn.leaf.groups:
            leaf.logits.mul_(3.0)
    return model


def exact_joint(model: ClassConditionalSPN) -> torch.Tensor:
    """``log p(x, y)`` of every state, ``[27, 3]`` (x in ``X_STATES`` order, y = column)."""
    x = X_STATES.repeat_interleave(NUM_CLASSES, dim=0)
    y = torch.arange(NUM_CLASSES).repeat(len(X_STATES))
    with torch.no_grad():
        return model.log_prob(x, y).reshape(len(X_STATES), NUM_CLASSES)


def state_index(x: torch.Tensor) -> torch.Tensor:
    """Index of every row of ``x [N, 3]`` in ``X_STATES``."""
    return (x.long() * torch.tensor([9, 3, 1])).sum(-1)


def chi_square_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    """Pearson chi-square p-value, pooling bins with expected count < 5; draws of probability 0 fail."""
    assert abs(probs.sum() - 1) < 1e-9
    assert counts[probs <= 0].sum() == 0, "draws of probability zero"
    expected = probs * counts.sum()
    keep = expected >= 5
    obs = np.append(counts[keep], counts[~keep].sum()) if (~keep).any() else counts[keep]
    exp = np.append(expected[keep], expected[~keep].sum()) if (~keep).any() else expected[keep]
    return float(stats.chi2.sf(((obs - exp) ** 2 / exp).sum(), len(obs) - 1))


# ------------------------------------------------------------------------------------------------
# the circuit and exact inference
# ------------------------------------------------------------------------------------------------


def test_build_class_conditional_spn_layout():
    spn = build_class_conditional_spn((1, 4, 4), 5, Normal(), depth=2, num_repetitions=2, num_sums=3,
                                      num_leaves=2)
    assert spn.event_shape == (17,)
    assert isinstance(spn.leaf, Mixed) and spn.leaf.sizes == (16, 1)
    assert isinstance(spn.leaf.groups[1], Categorical) and spn.leaf.groups[1].num_categories == 5


def test_joint_normalizes_and_marginals_are_exact():
    model = tiny_model()
    joint = exact_joint(model)
    assert float(joint.logsumexp((0, 1))) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        assert torch.allclose(model.log_prob_x(X_STATES), joint.logsumexp(1), atol=1e-10)
        partial = X_STATES.clone()
        partial[:, 0] = float("nan")  # x_0 missing: summed out
        expected = joint.reshape(3, 9, NUM_CLASSES).logsumexp(0).repeat(3, 1)  # [27, 3], x_0 varies slowest
        got = torch.stack([model.log_prob(partial, torch.full((27,), c)) for c in range(NUM_CLASSES)], dim=1)
        assert torch.allclose(got, expected, atol=1e-10)
        joint_values = model.join(X_STATES, torch.zeros(27, dtype=torch.long))
        assert torch.allclose(SPNDistribution(model.spn).log_prob(joint_values), joint[:, 0], atol=1e-12)


def test_classify_is_the_exact_posterior():
    model = tiny_model(seed=1)
    joint = exact_joint(model)
    with torch.no_grad():
        posterior = model.classify(X_STATES)
        assert posterior.shape == (27, NUM_CLASSES)
        assert torch.allclose(posterior, joint - joint.logsumexp(1, keepdim=True), atol=1e-10)
        partial = X_STATES[:9].clone()
        partial[:, 2] = float("nan")  # classify from x_0, x_1 only
        marginal = joint[:9].reshape(3, 3, NUM_CLASSES).logsumexp(1)  # [x_1 value, y] for x_0 = 0
        expected = (marginal - marginal.logsumexp(1, keepdim=True)).repeat_interleave(3, dim=0)
        assert torch.allclose(model.classify(partial), expected, atol=1e-10)


@pytest.mark.parametrize("method", ["sample", "rsample"])
def test_conditional_samples_fit_the_exact_conditional(method):
    model = tiny_model(seed=2)
    joint = exact_joint(model)
    conditional = (joint - joint.logsumexp(0, keepdim=True)).exp()  # p(x | y), [27, 3]
    torch.manual_seed(0)
    per_class = 3000
    labels = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    draws = getattr(model, method)(labels).detach()
    assert draws.shape == (NUM_CLASSES * per_class, 3)
    assert set(draws.unique().tolist()) <= set(VALUES)
    for c in range(NUM_CLASSES):
        counts = np.bincount(state_index(draws[labels == c]).numpy(), minlength=27)
        assert chi_square_pvalue(counts, conditional[:, c].numpy()) > 1e-3, c


def test_sample_joint_fits_the_exact_joint():
    model = tiny_model(seed=3)
    probs = exact_joint(model).exp().flatten().numpy()  # index 3·x_state + y
    torch.manual_seed(1)
    x, y = model.sample_joint(6000)
    assert x.shape == (6000, 3) and y.dtype == torch.long
    counts = np.bincount((3 * state_index(x) + y).numpy(), minlength=81)
    assert chi_square_pvalue(counts, probs) > 1e-3


@pytest.mark.parametrize("hard", [True, False])
def test_rsample_is_differentiable(hard):
    model = ClassConditionalSPN((1, 2, 2), 2, Binomial(total_count=4), depth=1, num_repetitions=2, num_sums=2,
                                num_leaves=2)
    draws = model.rsample(torch.tensor([0, 1, 1]), temperature=0.5, hard=hard)
    assert draws.shape == (3, 1, 2, 2) and draws.requires_grad
    if hard:
        assert torch.equal(draws, draws.round()) and bool(((draws >= 0) & (draws <= 4)).all())
    draws.sum().backward()
    gradient = model.spn.leaf.groups[0].logits.grad
    assert gradient is not None and bool(gradient.abs().sum() > 0)


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def test_fit_on_digits_learns_a_classifier():
    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None]  # [1797, 1, 8, 8], counts 0..16
    y = torch.tensor(digits.target)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[: int(0.7 * len(x))], order[int(0.7 * len(x)):]
    model = ClassConditionalSPN((1, 8, 8), 10, Binomial(total_count=16), depth=2, num_repetitions=5,
                                num_sums=10, num_leaves=10)
    history = fit_class_conditional(model, x[train], y[train], epochs=4, lr=0.1, batch_size=128, seed=0)
    assert len(history) == 4 and history[-1] < 0.6 * history[0]
    with torch.no_grad():
        accuracy = float((model.classify(x[test]).argmax(1) == y[test]).float().mean())
        test_nll = float(-model.log_prob(x[test], y[test]).mean())
    assert accuracy > 0.5  # chance: 0.1
    assert test_nll < 0.6 * history[0]
    samples = model.sample(torch.arange(10))
    assert samples.shape == (10, 1, 8, 8) and bool(((samples >= 0) & (samples <= 16)).all())


def test_fit_is_deterministic_and_leaves_the_global_rng_alone():
    x = torch.randint(0, 3, (40, 3)).double()
    y = torch.randint(0, NUM_CLASSES, (40,))
    runs = []
    for _ in range(2):
        model = tiny_model()
        state = torch.get_rng_state()
        history = fit_class_conditional(model, x, y, epochs=3, lr=0.05, batch_size=16, seed=7)
        assert torch.equal(torch.get_rng_state(), state)
        runs.append((history, model.state_dict()))
    assert runs[0][0] == runs[1][0] and runs[0][0][-1] < runs[0][0][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


# ------------------------------------------------------------------------------------------------
# argument errors
# ------------------------------------------------------------------------------------------------


def test_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        ClassConditionalSPN((3,), 1, Binomial(total_count=2), depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    with pytest.raises(TypeError, match="data_leaf"):
        build_class_conditional_spn((3,), 2, "binomial", depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    with pytest.raises(ValueError, match="event_shape"):
        ClassConditionalSPN((0,), 2, Binomial(total_count=2), depth=1, num_repetitions=1, num_sums=1, num_leaves=1)
    model = tiny_model()
    x, y = X_STATES[:4], torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="x: expected"):
        model.log_prob(x[:, :2], y)
    with pytest.raises(ValueError, match="x: entries outside"):
        model.log_prob(x + 3, y)
    with pytest.raises(ValueError, match="y: class labels"):
        model.log_prob(x, y + 1)
    with pytest.raises(ValueError, match="y: expected an integer"):
        model.log_prob(x, y.double())
    with pytest.raises(ValueError, match="same N"):
        model.log_prob(x, y[:3])
    with pytest.raises(ValueError, match="labels: class labels"):
        model.sample(torch.tensor([-1]))
    with pytest.raises(ValueError, match="num_samples"):
        model.sample_joint(0)
    with pytest.raises(TypeError, match="model"):
        fit_class_conditional(model.spn, x, y)
    with pytest.raises(ValueError, match="images: expected"):
        fit_class_conditional(model, x[:, None], y)
    with pytest.raises(ValueError, match="labels: expected"):
        fit_class_conditional(model, x, y[:, None])
    with pytest.raises(ValueError, match="epochs"):
        fit_class_conditional(model, x, y, epochs=0)
    with pytest.raises(ValueError, match="lr"):
        fit_class_conditional(model, x, y, lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        fit_class_conditional(model, x, y, batch_size=0)
