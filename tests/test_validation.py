"""Argument and value validation: every error is raised early and names the offending argument."""

from __future__ import annotations

import math

import pyro
import pytest
import torch

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Normal
from pyro_spn.sampling import sample, select

NAN = float("nan")


def make_spn(leaf=None, event_shape=4, seed: int = 0) -> RatSPN:
    leaf = Normal() if leaf is None else leaf
    return RatSPN(event_shape, depth=1, num_repetitions=2, num_sums=3, num_leaves=3, leaf=leaf, seed=seed)


@pytest.fixture
def spn() -> RatSPN:
    return make_spn()


# -- SPNDistribution constructor ----------------------------------------------------------------------
@pytest.mark.parametrize("temperature", [0, 0.0, -1, -1.0, NAN, math.inf, torch.tensor(0.0), torch.tensor(-2.0),
                                         torch.tensor(NAN), torch.tensor([1.0, 2.0]), torch.ones(1, 2)])
def test_temperature_bad_value(spn, temperature):
    with pytest.raises(ValueError, match="temperature"):
        SPNDistribution(spn, temperature=temperature)


@pytest.mark.parametrize("temperature", ["a", None, True, [1.0], object()])
def test_temperature_bad_type(spn, temperature):
    with pytest.raises(TypeError, match="temperature"):
        SPNDistribution(spn, temperature=temperature)


@pytest.mark.parametrize("temperature", [1, 0.5, torch.tensor(0.3), torch.tensor([0.3]),
                                         torch.tensor(2.0, requires_grad=True)])
def test_temperature_good_values_are_scalars(spn, temperature):
    d = SPNDistribution(spn, temperature=temperature)
    assert d.temperature.shape == ()
    assert float(d.temperature.detach()) == pytest.approx(float(torch.as_tensor(temperature).detach().reshape(())))


def test_learned_temperature_keeps_its_gradient(spn):
    tau = torch.tensor(0.7, requires_grad=True)
    d = SPNDistribution(spn, temperature=tau, hard=False)
    d.rsample((8,)).pow(2).sum().backward()
    assert tau.grad is not None and torch.isfinite(tau.grad) and tau.grad != 0


@pytest.mark.parametrize("hard", ["yes", 1, 0, None, torch.tensor(True)])
def test_hard_must_be_bool(spn, hard):
    with pytest.raises(TypeError, match="hard"):
        SPNDistribution(spn, hard=hard)


@pytest.mark.parametrize("interpolation", ["foo", "Unit", "", None])
def test_interpolation_must_be_known(spn, interpolation):
    with pytest.raises(ValueError, match="interpolation"):
        SPNDistribution(spn, interpolation=interpolation)


@pytest.mark.parametrize("bad", [object(), None, torch.nn.Linear(2, 2), "spn"])
def test_spn_must_be_a_ratspn(bad):
    with pytest.raises(TypeError, match="spn"):
        SPNDistribution(bad)


def test_infer_shapes_rejects_non_scalar_temperature():
    with pytest.raises(ValueError, match="temperature"):
        SPNDistribution.infer_shapes(spn=(4,), temperature=(2,))


# -- log_prob value checks ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 3), (5, 4, 1), (3,), (5,), (4, 2)])
def test_log_prob_wrong_event_shape(spn, shape):
    with pytest.raises(ValueError, match="value") as info:
        SPNDistribution(spn).log_prob(torch.zeros(shape))
    assert "4" in str(info.value) and str(tuple(shape)) in str(info.value)


def test_log_prob_wrong_event_shape_image():
    spn = make_spn(event_shape=(2, 2, 3))
    d = SPNDistribution(spn)
    with pytest.raises(ValueError, match="value") as info:
        d.log_prob(torch.zeros(5, 2, 3))
    assert "2, 2, 3" in str(info.value)
    assert d.log_prob(torch.zeros(5, 2, 2, 3)).shape == (5,)


def test_log_prob_rejects_non_tensor(spn):
    with pytest.raises((TypeError, ValueError), match="value"):
        SPNDistribution(spn).log_prob([0.0, 0.0, 0.0, 0.0])


def test_log_prob_batch_must_broadcast_with_batch_shape(spn):
    d = SPNDistribution(spn).expand([3])
    with pytest.raises(ValueError, match="value"):
        d.log_prob(torch.zeros(2, 4))
    assert d.log_prob(torch.zeros(1, 4)).shape == (3,)
    assert d.log_prob(torch.zeros(2, 1, 4)).shape == (2, 3)


SUPPORT_CASES = [
    (lambda: Binomial(total_count=255), [256.0, 1.5, -1.0, 255.5]),
    (lambda: Bernoulli(), [2.0, 0.5, -1.0]),
    (lambda: Categorical(num_categories=3), [3.0, 1.5, -1.0]),
]


@pytest.mark.parametrize("make_leaf, bad_values", SUPPORT_CASES)
def test_values_outside_support_raise_with_validation(make_leaf, bad_values):
    spn = make_spn(make_leaf())
    d = SPNDistribution(spn, validate_args=True)
    good = torch.zeros(2, 4)
    assert torch.isfinite(d.log_prob(good)).all()
    for bad in bad_values:
        x = good.clone()
        x[1, 2] = bad
        with pytest.raises(ValueError, match="value"):
            d.log_prob(x)
        with pytest.raises(ValueError, match="value"):
            d.expand([3, 2]).log_prob(x)  # expanded copies keep the validation flag
        with pytest.raises(ValueError):
            d.condition(x)


@pytest.mark.parametrize("make_leaf, bad_values", SUPPORT_CASES[:2])
def test_values_outside_support_no_error_without_validation(make_leaf, bad_values):
    spn = make_spn(make_leaf())
    d = SPNDistribution(spn, validate_args=False)
    for bad in bad_values:
        x = torch.zeros(2, 4)
        x[1, 2] = bad
        assert d.log_prob(x).shape == (2,)
        assert d.expand([3, 2]).log_prob(x).shape == (3, 2)


def test_global_validation_flag_is_respected():
    spn = make_spn(Bernoulli())
    x = torch.zeros(4)
    x[0] = 2.0
    with pyro.validation_enabled(True):
        with pytest.raises(ValueError, match="value"):
            SPNDistribution(spn).log_prob(x)
    with pyro.validation_enabled(False):
        assert SPNDistribution(spn).log_prob(x).shape == ()


def test_out_of_support_observation_in_pyro_sample_raises():
    spn = make_spn(Binomial(total_count=3))

    def model():
        pyro.sample("x", SPNDistribution(spn, validate_args=True), obs=torch.tensor([0.0, 1.0, 4.0, 2.0]))

    with pytest.raises(ValueError, match="value"):
        pyro.poutine.trace(model).get_trace().compute_log_prob()


def test_nan_allowed_in_log_prob_but_not_in_conditional_values(spn):
    d = SPNDistribution(spn, validate_args=True)
    x = torch.zeros(3, 4)
    x[0, 1] = NAN
    x[2] = NAN
    lp = d.log_prob(x)
    assert lp.shape == (3,) and torch.isfinite(lp).all()
    assert lp[2].item() == pytest.approx(0.0, abs=1e-5)  # everything marginalized: log 1

    c = d.condition(x)  # NaN in the evidence is what conditioning is for
    value = c.sample()
    assert torch.isfinite(c.log_prob(value)).all()
    with pytest.raises(ValueError, match="value"):
        c.log_prob(x)


# -- conditioning, evidence ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(5, 3), (3,), (5, 4, 2)])
def test_condition_wrong_shape(spn, shape):
    with pytest.raises(ValueError, match="evidence"):
        SPNDistribution(spn).condition(torch.full(shape, NAN))


@pytest.mark.parametrize("shape", [(5, 3), (3,)])
def test_mpe_wrong_shape(spn, shape):
    with pytest.raises(ValueError, match="evidence"):
        SPNDistribution(spn).mpe(torch.full(shape, NAN))


def test_condition_evidence_outside_support_names_evidence():
    spn = make_spn(Bernoulli())
    ev = torch.full((2, 4), NAN)
    ev[0, 0] = 3.0
    with pytest.raises(ValueError, match="evidence"):
        SPNDistribution(spn, validate_args=True).condition(ev)


def test_conditional_log_prob_wrong_shape(spn):
    c = SPNDistribution(spn).condition(torch.full((2, 4), NAN))
    with pytest.raises(ValueError, match="value"):
        c.log_prob(torch.zeros(2, 3))


def test_ratspn_sample_evidence_batch_mismatch(spn):
    with pytest.raises(ValueError, match="evidence"):
        sample(spn, 3, evidence=torch.full((5, 4), NAN))
    with pytest.raises(ValueError, match="evidence"):
        sample(spn, 5, evidence=torch.full((5, 4), NAN)[:3])
    assert sample(spn, 5, evidence=torch.full((5, 4), NAN)).shape == (5, 4)


def test_ratspn_sample_evidence_wrong_event_shape(spn):
    with pytest.raises(ValueError):
        sample(spn, 5, evidence=torch.full((5, 3), NAN))


# -- selection rules -----------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["bogus", "Hard", "", "gumbel"])
def test_select_unknown_rule(rule):
    with pytest.raises(ValueError, match="rule"):
        select(torch.zeros(2, 3), rule)


def test_ratspn_sample_unknown_rule_and_interpolation(spn):
    with pytest.raises(ValueError, match="rule"):
        sample(spn, 2, "bogus")
    with pytest.raises(ValueError, match="interpolation"):
        sample(spn, 2, "soft", interpolation="foo")


# -- circuit and leaf hyper-parameters ------------------------------------------------------------------
@pytest.mark.parametrize("total_count,error", [(0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                                               (False, TypeError), ("3", TypeError), (None, TypeError),
                                               (2.0, TypeError)])
def test_binomial_total_count(total_count, error):
    with pytest.raises(error, match="total_count"):
        Binomial(total_count=total_count)


@pytest.mark.parametrize("num_categories,error", [(1, ValueError), (0, ValueError), (-3, ValueError),
                                                  (2.0, TypeError), (True, TypeError), ("3", TypeError)])
def test_categorical_num_categories(num_categories, error):
    with pytest.raises(error, match="num_categories"):
        Categorical(num_categories=num_categories)


@pytest.mark.parametrize("min_scale", [0, 0.0, -1.0, NAN])
def test_normal_min_scale(min_scale):
    with pytest.raises(ValueError, match="min_scale"):
        Normal(min_scale=min_scale)


@pytest.mark.parametrize("min_scale", [math.inf, "a"])
def test_normal_min_scale_non_finite_or_non_number(min_scale):
    """A non-number or infinite ``min_scale`` makes every scale unusable: it must be rejected by name."""
    with pytest.raises((TypeError, ValueError), match="min_scale"):
        Normal(min_scale=min_scale)


def test_good_leaf_hyper_parameters():
    assert Binomial(total_count=1).total_count == 1
    assert Categorical(num_categories=2).num_categories == 2
    assert Normal(min_scale=1e-6).min_scale == pytest.approx(1e-6)


@pytest.mark.parametrize("name, value, error", [("depth", 0, ValueError), ("depth", 1.5, TypeError),
                                                ("num_repetitions", 0, ValueError), ("num_sums", True, TypeError),
                                                ("num_leaves", -2, ValueError), ("num_leaves", 2.0, TypeError)])
def test_ratspn_positive_ints(name, value, error):
    kwargs = dict(depth=1, num_repetitions=2, num_sums=3, num_leaves=3)
    kwargs[name] = value
    with pytest.raises(error, match=name):
        RatSPN(4, leaf=Normal(), **kwargs)


@pytest.mark.parametrize("event_shape, error", [(0, ValueError), (-1, ValueError), ((), ValueError),
                                                ((2, 0), ValueError), ((1, 2, 3, 4), ValueError),
                                                ((2.0,), TypeError), (True, TypeError)])
def test_ratspn_event_shape(event_shape, error):
    with pytest.raises(error, match="event_shape"):
        RatSPN(event_shape, depth=1, num_repetitions=1, num_sums=2, num_leaves=2, leaf=Normal())


def test_ratspn_leaf_type():
    with pytest.raises(TypeError, match="leaf"):
        RatSPN(4, depth=1, num_repetitions=1, num_sums=2, num_leaves=2, leaf=object())
