"""Bad arguments to the public API raise a ``TypeError`` (wrong type) or ``ValueError`` (bad value) that names the
argument, instead of a deep torch error or a silent wrong result (issue 15, item 18, and its siblings)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Binomial, Categorical, Mixed, Normal, leaf_from_config
from pyro_spn.temperature import AnnealedTemperature, ConstantTemperature, LearnedTemperature


@pytest.fixture
def spn() -> RatSPN:
    return RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal())


# -- complex and other non-real inputs ------------------------------------------------------------------------------

def test_complex_values_are_rejected(spn):
    """Complex tensors used to be cast to real with a warning, silently dropping the imaginary part."""
    d = SPNDistribution(spn)
    value = torch.zeros(2, 4, dtype=torch.complex64)
    with pytest.raises(TypeError, match="value"):
        d.log_prob(value)
    with pytest.raises(TypeError, match="evidence"):
        d.condition(value)
    with pytest.raises(TypeError, match="evidence"):
        d.mpe(value)
    with pytest.raises(TypeError, match="value"):
        d.condition(torch.full((2, 4), math.nan)).log_prob(value)
    with pytest.raises(TypeError, match="x"):
        spn(value)


@pytest.mark.parametrize("value", [[[0.0, 0.0, 0.0, 0.0]], 0.0, None])
def test_non_tensor_values_are_type_errors(spn, value):
    with pytest.raises(TypeError, match="value"):
        SPNDistribution(spn).log_prob(value)
    with pytest.raises(TypeError, match="x"):
        spn(value)


def test_integer_and_bool_values_are_accepted(spn):
    d = SPNDistribution(spn)
    expected = d.log_prob(torch.zeros(2, 4))
    torch.testing.assert_close(d.log_prob(torch.zeros(2, 4, dtype=torch.long)), expected)
    torch.testing.assert_close(d.log_prob(torch.zeros(2, 4, dtype=torch.bool)), expected)


# -- temperatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("temperature", [1j, torch.tensor(1 + 0j), torch.tensor(True), "1"],
                         ids=["complex", "complex-tensor", "bool-tensor", "string"])
def test_temperature_of_the_wrong_type(spn, temperature):
    with pytest.raises(TypeError, match="temperature"):
        SPNDistribution(spn, temperature=temperature)


@pytest.mark.parametrize("temperature", [1e-30, 1e-7, torch.tensor(1e-30), torch.tensor(1e-40), 1e300])
def test_temperature_too_small_or_not_finite(spn, temperature):
    """Below 1e-6 the relaxed selections' gradients (``-z/τ²``) overflow float32."""
    with pytest.raises(ValueError, match="temperature"):
        SPNDistribution(spn, temperature=temperature)


def test_integer_tensor_temperature_becomes_a_float(spn):
    d = SPNDistribution(spn, temperature=torch.tensor(2))
    assert d.temperature.dtype == torch.get_default_dtype() and float(d.temperature) == 2.0


# -- seeds ----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed, error", [(1.5, TypeError), ("3", TypeError), (True, TypeError), (None, TypeError),
                                         (-1, ValueError), (2**64, ValueError), (2**100, ValueError)])
def test_seed(seed, error):
    with pytest.raises(error, match="seed"):
        RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Normal(), seed=seed)


def test_largest_seed_is_accepted():
    spn = RatSPN(4, depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=Normal(), seed=2**63 - 1)
    assert spn.seed == 2**63 - 1


# -- sample and batch shapes ----------------------------------------------------------------------------------------

BAD_SHAPES = [(3, TypeError), (2.5, TypeError), ("a", TypeError), (None, TypeError), ((2.5,), TypeError),
              ((True,), TypeError), (torch.tensor([2]), TypeError), ((-1,), ValueError), ((2, -3), ValueError)]


def _draws(d: SPNDistribution):
    conditional = d.condition(torch.full((1, 4), math.nan))
    return {"sample": d.sample, "rsample": d.rsample, "conditional sample": conditional.sample,
            "conditional rsample": conditional.rsample}


@pytest.mark.parametrize("sample_shape, error", BAD_SHAPES)
def test_bad_sample_shape(spn, sample_shape, error):
    for name, draw in _draws(SPNDistribution(spn)).items():
        with pytest.raises(error, match="sample_shape"):
            draw(sample_shape)
            pytest.fail(name)


@pytest.mark.parametrize("sample_shape", [(2**40,), (2**20, 2**20), (2**62,), (2**40, 2**40)])
def test_huge_sample_shape(spn, sample_shape):
    """More than the device's memory (or than can be indexed) is a ``ValueError``, not an allocator error."""
    for draw in _draws(SPNDistribution(spn)).values():
        with pytest.raises(ValueError, match="sample_shape"):
            draw(sample_shape)


@pytest.mark.parametrize("sample_shape", [(), (0,), [2], torch.Size([2, 3]), (0, 5)])
def test_good_sample_shapes(spn, sample_shape):
    for draw in _draws(SPNDistribution(spn)).values():
        shape = tuple(sample_shape)
        assert draw(sample_shape).shape[:len(shape)] == shape


@pytest.mark.parametrize("batch_shape, error", BAD_SHAPES)
def test_bad_batch_shape(spn, batch_shape, error):
    with pytest.raises(error, match="batch_shape"):
        SPNDistribution(spn).expand(batch_shape)
    with pytest.raises(error, match="batch_shape"):
        SPNDistribution(spn).condition(torch.full((1, 4), math.nan)).expand(batch_shape)


# -- infinite evidence ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [math.inf, -math.inf])
def test_infinite_evidence_is_rejected(spn, bad):
    """An observation of density zero leaves nothing to condition on; ``log_prob`` of it is ``-inf`` (as torch)."""
    d = SPNDistribution(spn, validate_args=True)
    evidence = torch.tensor([[bad, math.nan, 0.0, 0.0]])
    with pytest.raises(ValueError, match="evidence"):
        d.condition(evidence)
    with pytest.raises(ValueError, match="evidence"):
        d.mpe(evidence)
    with pytest.raises(ValueError, match="evidence"):
        d.mpe_with_log_prob(evidence)
    assert float(d.log_prob(evidence).detach()) == -math.inf


# -- leaves ---------------------------------------------------------------------------------------------------------

def test_nested_mixed_leaf():
    with pytest.raises(TypeError, match="groups"):
        Mixed([(Mixed([(Normal(), 2)]), 2)])


@pytest.mark.parametrize("config", [
    {"type": "mixed", "groups": [[{"type": "mixed", "groups": [[{"type": "normal"}, 2]]}, 2]]},
    {"type": "mixed", "groups": [[{"type": "normal"}, "2"]]},
    {"type": ["normal"]},
], ids=["nested-mixed", "string-size", "unhashable-type"])
def test_bad_leaf_configs_are_value_errors(config):
    """A config is a mapping whatever its contents: its bad contents are bad values."""
    with pytest.raises(ValueError, match="leaf config"):
        leaf_from_config(config)


# -- huge circuits --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", [dict(event_shape=(2**31, 2**31)), dict(num_sums=2**40), dict(depth=25),
                                     dict(num_repetitions=2**50), dict(num_leaves=2**40),
                                     dict(leaf=Categorical(num_categories=2**40))])
def test_huge_circuits(options):
    arguments = dict(event_shape=4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Binomial(total_count=3))
    arguments.update(options)
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        RatSPN(arguments.pop("event_shape"), **arguments)


# -- temperature schedules --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, name", [(lambda: LearnedTemperature(init=1e300), "init"),
                                        (lambda: ConstantTemperature(1e300), "value"),
                                        (lambda: AnnealedTemperature(start=1e300), "start"),
                                        (lambda: LearnedTemperature(floor=1e-30), "floor"),
                                        (lambda: ConstantTemperature(1j), "value")])
def test_temperature_schedule_arguments(make, name):
    """Temperatures float32 cannot hold (which became ``inf`` buffers) or too small to keep gradients finite."""
    with pytest.raises((TypeError, ValueError), match=name):
        make()


def test_large_learned_temperature_starts_where_asked():
    """The inverse softplus overflowed (``OverflowError``) for an initial temperature of 1e5."""
    for init in (1e5, 1e30, 0.0100001):
        assert float(LearnedTemperature(init=init)().detach()) == pytest.approx(init, rel=1e-6)


# -- the sampler's own entry point ------------------------------------------------------------------------------------

@pytest.mark.parametrize("changes, error, name", [(dict(num_samples=-1), ValueError, "num_samples"),
                                                  (dict(num_samples=2.5), TypeError, "num_samples"),
                                                  (dict(num_samples=2**62), ValueError, "num_samples"),
                                                  (dict(temperature=1e-30), ValueError, "temperature"),
                                                  (dict(rule="greedy"), ValueError, "rule")])
def test_sampler_arguments(changes, error, name):
    from pyro_spn.sampling import sample

    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Binomial(total_count=3))
    arguments = dict(num_samples=3, rule="soft", temperature=0.5)
    arguments.update(changes)
    with pytest.raises(error, match=name):
        sample(spn, **arguments)
    assert sample(spn, 0, "exact").shape == (0, 4)
