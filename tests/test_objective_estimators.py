"""The objectives' gradient estimators (ADV generator loss, MMD with a fixed kernel, PAE) against exact gradients of
their expected losses, computed by enumerating every state of small discrete circuits: the unbiased estimators agree
in the mean of many estimates, the exact ones to round-off."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import all_states, spread_out
from test_estimators import assert_unbiased

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.estimators import critic_samples
from pyro_spn.joint import JointSPN
from pyro_spn.leaves import Binomial, Normal
from pyro_spn.nets import make_discriminator, make_encoder
from pyro_spn.objectives import AdversarialObjective, AutoEncodingObjective, HybridObjective, MMDObjective

DTYPE = torch.float64
VALUES = (0.0, 1.0, 2.0)
LEAF = Binomial(total_count=2)


def circuit(seed: int = 0) -> RatSPN:
    spn = RatSPN(3, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=LEAF, seed=seed).to(DTYPE)
    return spread_out(spn, seed)


def joint_circuit(seed: int = 0) -> JointSPN:
    joint = JointSPN(3, LEAF, Normal(), 1, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, seed=seed).to(DTYPE)
    spread_out(joint.spn, seed)
    return joint


def gradient(module: torch.nn.Module, value: torch.Tensor) -> torch.Tensor:
    module.zero_grad()
    value.backward()
    return torch.cat([p.grad.flatten() for p in module.parameters()])


def estimates(module: torch.nn.Module, loss, repeats: int) -> torch.Tensor:
    return torch.stack([gradient(module, loss()) for _ in range(repeats)])


DATA = torch.tensor([[0.0, 1.0, 2.0], [2.0, 2.0, 1.0], [1.0, 0.0, 0.0], [2.0, 1.0, 1.0]], dtype=DTYPE)
STATES = all_states([VALUES] * 3)


def test_adversarial_score_estimator_is_unbiased():
    spn = circuit(1)
    torch.manual_seed(0)
    objective = AdversarialObjective(make_discriminator(3).to(DTYPE), scale=2.0, estimator="score")
    objective.discriminator.eval()  # spectral normalization's power iteration would change f between calls
    d = SPNDistribution(spn)
    with torch.no_grad():
        losses = F.softplus(-objective.logits(STATES))
    exact = gradient(spn, (spn(STATES).exp() * losses).sum())
    batch = torch.zeros(2000, 3, dtype=DTYPE)  # sets only the number of samples
    assert_unbiased(estimates(spn, lambda: objective.loss(d, batch), 40), exact)
    assert all(p.grad is None for p in objective.discriminator.parameters())


def exact_mmd2(spn: RatSPN, data: torch.Tensor, bandwidths, scale: float) -> torch.Tensor:
    p = spn(STATES).exp()
    states, data = STATES / scale, data / scale
    total = torch.zeros((), dtype=DTYPE)
    for s in bandwidths:
        gram = torch.exp(-torch.cdist(states, states).square() / (2 * s**2))
        cross = torch.exp(-torch.cdist(states, data).square() / (2 * s**2)).mean(1)
        total = total + p @ gram @ p - 2 * p @ cross
    return total + _within(data, bandwidths)


def _within(data: torch.Tensor, bandwidths) -> torch.Tensor:
    n = len(data)
    gram = sum(torch.exp(-torch.cdist(data, data).square() / (2 * s**2)) for s in bandwidths)
    return (gram.sum() - gram.diagonal().sum()) / (n * (n - 1))


@pytest.mark.parametrize("estimator", ["score", "exact"])
def test_mmd_estimators_are_unbiased(estimator):
    spn = circuit(2)
    bandwidths, scale = (0.5, 1.5), 2.0
    objective = MMDObjective(bandwidths, scale=scale, estimator=estimator)
    d = SPNDistribution(spn)
    data = DATA.repeat(50, 1)  # the number of model samples is the batch's
    exact = gradient(spn, exact_mmd2(spn, data, bandwidths, scale))
    torch.manual_seed(1)
    values = torch.stack([objective.loss(d, data).detach() for _ in range(30)])
    want = exact_mmd2(spn, data, bandwidths, scale).detach()
    assert abs(float(values.mean() - want)) < 5 * float(values.std()) / 30**0.5 + 1e-9
    assert_unbiased(estimates(spn, lambda: objective.loss(d, data), 40), exact)


def test_mmd_score_estimator_with_a_learned_kernel_is_unbiased():
    spn = circuit(3)
    torch.manual_seed(2)
    encoder = make_encoder(3, 4).to(DTYPE).eval()  # a fixed f (no power iteration between calls)
    objective = MMDObjective((1.0,), encoder=encoder, scale=2.0, estimator="score")
    with torch.no_grad():
        features = objective.features(STATES)
        data_features = objective.features(DATA)
    gram = torch.exp(-torch.cdist(features, features).square() / 2)
    cross = torch.exp(-torch.cdist(features, data_features).square() / 2).mean(1)
    p = spn(STATES).exp()
    exact = gradient(spn, p @ gram @ p - 2 * p @ cross)
    data = DATA.repeat(100, 1)
    assert_unbiased(estimates(spn, lambda: objective.loss(SPNDistribution(spn), data), 40), exact)


def expected_reconstruction(objective: AutoEncodingObjective, d, x: torch.Tensor) -> torch.Tensor:
    """``mean_n Σ_x̂ p(x̂ | encode(x_n)) error(x̂, x_n)``, by enumeration (the encoding differentiable)."""
    codes = d.encode(x)
    total = torch.zeros((), dtype=DTYPE)
    for code, row in zip(codes, x, strict=True):
        log_p = d.decode_log_prob(STATES, code.expand(len(STATES), 1))
        errors = objective.reconstruction_error(STATES, row.expand(len(STATES), 3))
        total = total + (log_p.exp() * errors).sum()
    return total / len(x)


@pytest.mark.parametrize("reconstruction", ["bce", "mse"])
def test_autoencoding_exact_estimator_matches_enumeration(reconstruction):
    joint = joint_circuit(4)
    d = joint.distribution()
    objective = AutoEncodingObjective(reconstruction, scale=2.0, estimator="exact")
    exact_value = expected_reconstruction(objective, d, DATA)
    torch.testing.assert_close(objective.loss(d, DATA), exact_value, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(gradient(joint, objective.loss(d, DATA)),
                               gradient(joint, expected_reconstruction(objective, d, DATA)), rtol=1e-7, atol=1e-9)


def test_autoencoding_score_estimator_is_unbiased():
    joint = joint_circuit(5)
    d = joint.distribution()
    objective = AutoEncodingObjective("bce", scale=2.0, estimator="score", num_samples=64)
    exact = gradient(joint, expected_reconstruction(objective, d, DATA))
    torch.manual_seed(3)
    assert_unbiased(estimates(joint, lambda: objective.loss(d, DATA), 60), exact)


def test_hybrid_keeps_its_base_estimator_and_critics_see_exact_samples_unless_soft():
    spn = circuit(6)
    d = SPNDistribution(spn, temperature=0.5, hard=False)
    base = MMDObjective((1.0,), scale=2.0, estimator="exact")
    hybrid = HybridObjective(base, 0.5)
    want = base.loss(d, DATA) - 0.5 * d.log_prob(DATA).mean()
    torch.manual_seed(0)
    torch.testing.assert_close(hybrid.loss(d, DATA).detach(), want.detach(), rtol=0.2, atol=0.2)
    exact = critic_samples(d, 200, "score")
    assert torch.equal(exact, exact.round())
    soft = critic_samples(d, 200, "soft")
    assert not torch.equal(soft, soft.round())
    assert not soft.requires_grad and not exact.requires_grad


def test_estimator_errors():
    discriminator = make_discriminator(3)
    with pytest.raises(ValueError, match="estimator"):
        AdversarialObjective(discriminator, estimator="exact")
    with pytest.raises(ValueError, match="encoder"):
        MMDObjective(encoder=make_encoder(3, 2), estimator="exact")
    with pytest.raises(ValueError, match="num_samples"):
        AutoEncodingObjective(estimator="score", num_samples=1)
    with pytest.raises(ValueError, match="estimator"):
        AutoEncodingObjective(estimator="rebar")
    objective = AdversarialObjective(discriminator, estimator="score")
    with pytest.raises(TypeError, match="circuit's distribution"):
        objective.loss(torch.distributions.Normal(torch.zeros(3), 1.0), DATA.float())
