"""Temperature schedules: constant, annealed (the paper's formula), learned (a trained positive parameter)."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.leaves import Normal
from pyro_spn.temperature import (
    AnnealedTemperature,
    ConstantTemperature,
    LearnedTemperature,
    Temperature,
    make_temperature,
)


def test_constant_stays_and_has_no_parameters():
    tau = ConstantTemperature(0.7)
    for epoch in range(5):
        tau.step(epoch, 5)
        assert tau().shape == ()
        assert float(tau().detach()) == pytest.approx(0.7)
    assert list(tau.parameters()) == []


@pytest.mark.parametrize("start, minimum, rate, max_epochs", [(1.0, 0.5, 1.0, 30), (2.0, 0.1, 3.0, 10)])
def test_annealed_follows_the_formula_and_never_drops_below_minimum(start, minimum, rate, max_epochs):
    tau = AnnealedTemperature(start=start, minimum=minimum, rate=rate)
    assert float(tau().detach()) == pytest.approx(start)  # before the first step
    values = []
    for epoch in range(max_epochs + 5):
        tau.step(epoch, max_epochs)
        values.append(float(tau().detach()))
        assert values[-1] == pytest.approx(max(minimum, start * math.exp(-rate * epoch / max_epochs)))
        assert values[-1] >= minimum
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_annealed_paper_schedule_at_start_middle_end():
    tau = AnnealedTemperature()  # the paper's: from 1.0 down to 0.5
    tau.step(0, 30)
    assert float(tau().detach()) == pytest.approx(1.0)
    tau.step(15, 30)
    assert float(tau().detach()) == pytest.approx(math.exp(-0.5))
    tau.step(30, 30)
    assert float(tau().detach()) == pytest.approx(0.5)  # exp(-1) < 0.5


def test_annealed_value_is_in_the_state_dict():
    tau = AnnealedTemperature()
    tau.step(20, 30)
    resumed = AnnealedTemperature()
    resumed.load_state_dict(tau.state_dict())
    assert float(resumed()) == pytest.approx(float(tau().detach()))


def test_learned_has_a_gradient_and_moves_under_an_optimizer_step():
    tau = LearnedTemperature(init=1.0)
    assert float(tau().detach()) == pytest.approx(1.0)
    params = list(tau.parameters())
    assert len(params) == 1
    optimizer = torch.optim.SGD(params, lr=0.1)
    (tau() ** 2).backward()
    assert params[0].grad is not None and float(params[0].grad) > 0
    optimizer.step()
    assert float(tau().detach()) < 1.0


def test_learned_stays_above_its_floor():
    tau = LearnedTemperature(init=0.5, floor=0.05)
    with torch.no_grad():
        tau.raw.fill_(-1e4)
    assert float(tau().detach()) >= 0.05


def test_learned_reaches_a_circuit_through_rsample():
    torch.manual_seed(0)
    spn = RatSPN((2,), depth=1, num_repetitions=2, num_sums=3, num_leaves=3, leaf=Normal(), seed=0)
    tau = LearnedTemperature()
    SPNDistribution(spn, temperature=tau(), hard=False).rsample((8,)).pow(2).sum().backward()
    assert tau.raw.grad is not None and float(tau.raw.grad) != 0


@pytest.mark.parametrize("kind, cls", [("constant", ConstantTemperature), ("annealed", AnnealedTemperature),
                                       ("learned", LearnedTemperature)])
def test_make_temperature(kind, cls):
    tau = make_temperature(kind, value=0.8, minimum=0.4, rate=2.0)
    assert isinstance(tau, cls) and isinstance(tau, Temperature)
    assert float(tau().detach()) == pytest.approx(0.8)


def test_make_temperature_annealed_passes_minimum_and_rate():
    tau = make_temperature("annealed", value=1.0, minimum=0.2, rate=2.0)
    tau.step(5, 10)
    assert float(tau().detach()) == pytest.approx(max(0.2, math.exp(-1.0)))


def test_bad_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="constant.*annealed.*learned"):
        make_temperature("cosine")


@pytest.mark.parametrize("make, name", [
    (lambda: ConstantTemperature(0.0), "value"),
    (lambda: ConstantTemperature(float("nan")), "value"),
    (lambda: AnnealedTemperature(start=-1.0), "start"),
    (lambda: AnnealedTemperature(minimum=2.0), "minimum"),
    (lambda: AnnealedTemperature(rate=-1.0), "rate"),
    (lambda: LearnedTemperature(init=0.001), "init"),
    (lambda: LearnedTemperature(floor=0.0), "floor"),
    (lambda: AnnealedTemperature().step(-1, 10), "epoch"),
    (lambda: AnnealedTemperature().step(0, 0), "max_epochs"),
])
def test_bad_arguments_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()
