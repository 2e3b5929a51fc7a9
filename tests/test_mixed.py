"""The Mixed leaf: several leaf types in one circuit, checked against enumeration and exact probabilities."""

import itertools

import pytest
import torch
from conftest import goodness_of_fit

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Mixed, Normal

VALUES = ([0, 1], [0, 1], [0, 1, 2], [0, 1, 2], [0, 1, 2])  # Bernoulli ×2, Categorical(3), Binomial(2) ×2
PLACES = torch.tensor([54.0, 27, 9, 3, 1], dtype=torch.float64)  # mixed-radix code of a configuration


def discrete_circuit(seed: int = 0) -> SPNDistribution:
    torch.manual_seed(seed)
    leaf = Mixed([(Bernoulli(), 2), (Categorical(num_categories=3), 1), (Binomial(total_count=2), 2)])
    spn = RatSPN(5, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, leaf=leaf, seed=seed).double()
    return SPNDistribution(spn)


@pytest.fixture(scope="module")
def enumerated():
    d = discrete_circuit()
    configurations = torch.tensor(list(itertools.product(*VALUES)), dtype=torch.float64)
    with torch.no_grad():
        probs = d.log_prob(configurations).exp()
    return d, configurations, probs


def test_normalized_and_marginals(enumerated):
    d, configurations, probs = enumerated
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-12)
    evidence = configurations.clone()
    evidence[:, [1, 3]] = float("nan")
    with torch.no_grad():
        marginal = d.log_prob(evidence).exp()
    keep = [0, 2, 4]
    for row in range(0, len(configurations), 7):
        same = (configurations[:, keep] == configurations[row, keep]).all(-1)
        assert marginal[row].item() == pytest.approx(probs[same].sum().item(), rel=1e-10)


@pytest.mark.parametrize("method", ["sample", "rsample"])
def test_samples_match_exact_probabilities(enumerated, method):
    d, configurations, probs = enumerated
    torch.manual_seed(1)
    n = 100_000
    samples = getattr(d, method)((n,)).detach()
    assert d.support.check(samples).all()
    counts = torch.bincount((samples * PLACES).sum(-1).long(), minlength=108).double()
    counts = counts[(configurations * PLACES).sum(-1).long()]
    assert goodness_of_fit(counts, probs) > 1e-3


def test_mpe_and_mean_against_enumeration(enumerated):
    d, configurations, probs = enumerated
    evidence = configurations[[0, 40, 100]].clone()
    evidence[:, [0, 3]] = float("nan")
    completion, value = d.mpe_with_log_prob(evidence)
    observed = ~torch.isnan(evidence)
    assert torch.equal(completion[observed], evidence[observed])
    with torch.no_grad():
        completed_value = d.spn.upward(completion, max_product=True).log_likelihood
        for row in range(3):
            candidates = configurations[(configurations[:, observed[row]] == evidence[row, observed[row]]).all(-1)]
            best = d.spn.upward(candidates, max_product=True).log_likelihood.max()
            assert value[row].item() == pytest.approx(best.item(), abs=1e-10)
            assert completed_value[row].item() == pytest.approx(best.item(), abs=1e-10)
    assert torch.allclose(d.mean, (probs[:, None] * configurations).sum(0), atol=1e-10)


def test_support_is_per_variable(enumerated):
    d = enumerated[0]
    ok = torch.tensor([[1.0, 0, 2, 2, 1]], dtype=torch.float64)
    assert d.support.check(ok).all()
    for bad_entry, bad_value in [(0, 2.0), (2, 3.0), (3, 2.5), (4, 3.0)]:
        bad = ok.clone()
        bad[0, bad_entry] = bad_value
        assert not d.support.check(bad).all()
        with pytest.raises(ValueError, match="value"):
            d.log_prob(bad)


def test_normal_and_bernoulli_integrate_to_one():
    torch.manual_seed(0)
    spn = RatSPN(2, depth=1, num_repetitions=2, num_sums=2, num_leaves=3,
                 leaf=Mixed([(Bernoulli(), 1), (Normal(), 1)])).double()
    grid = torch.linspace(-12, 12, 4001, dtype=torch.float64)
    total = 0.0
    for b in (0.0, 1.0):
        with torch.no_grad():
            total += torch.trapezoid(spn(torch.stack([torch.full_like(grid, b), grid], -1)).exp(), grid).item()
    assert total == pytest.approx(1.0, abs=1e-6)


def test_relaxed_samples_give_gradients_to_every_group():
    torch.manual_seed(0)
    spn = RatSPN(6, depth=2, num_repetitions=2, num_sums=3, num_leaves=3,
                 leaf=Mixed([(Binomial(total_count=16), 4), (Normal(), 2)]))
    for hard in (True, False):
        spn.zero_grad()
        samples = SPNDistribution(spn, temperature=0.5, hard=hard).rsample((8,))
        if hard:
            assert torch.equal(samples[:, :4], samples[:, :4].round())
        (samples * torch.arange(1.0, 7.0)).sum().backward()
        for name, p in spn.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_bad_groups():
    with pytest.raises(ValueError, match="groups"):
        Mixed([])
    with pytest.raises(ValueError, match="groups"):
        Mixed([(Normal(), 0)])
    with pytest.raises(TypeError, match="groups"):
        Mixed([("normal", 2)])
    with pytest.raises(TypeError, match="groups"):
        Mixed([(Mixed([(Normal(), 1)]), 2)])  # no nesting
    leaf = Mixed([(Normal(), 2), (Bernoulli(), 2)])
    with pytest.raises(ValueError, match="add up to 4"):
        RatSPN(5, depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=leaf)
    RatSPN(4, depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=leaf)
