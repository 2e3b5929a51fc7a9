"""Gumbel-Softmax temperature schedules: constant, annealed, learned.

A schedule is an ``nn.Module`` whose call returns the current ``τ`` (a positive scalar tensor) to pass
to :class:`pyro_spn.SPNDistribution`. The trainer calls :meth:`Temperature.step` at the start of every
epoch; a learned temperature's ``parameters()`` go to the circuit's optimizer. The current value lives
in the module's ``state_dict`` (a buffer or a parameter), so it is saved with a checkpoint.
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checks

KINDS: tuple[str, ...] = ("constant", "annealed", "learned")


class Temperature(nn.Module, metaclass=abc.ABCMeta):
    """Base class: ``forward()`` returns the current ``τ``, a scalar tensor ``>=``
    :data:`~pyro_spn.checks.MIN_TEMPERATURE` (smaller ones overflow the relaxed selections' gradients)."""

    @abc.abstractmethod
    def forward(self) -> Tensor:
        """The current temperature, a scalar tensor ``>= MIN_TEMPERATURE``."""

    def step(self, epoch: int, max_epochs: int) -> None:
        """Called by the trainer at the start of every epoch (``0 <= epoch``); a no-op by default."""


class ConstantTemperature(Temperature):
    """A fixed ``τ = value``."""

    value: Tensor

    def __init__(self, value: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("value", torch.tensor(checks.temperature("value", value)))

    def forward(self) -> Tensor:
        return self.value


class AnnealedTemperature(Temperature):
    """``τ = max(minimum, start · exp(−rate · epoch / max_epochs))``, updated by :meth:`step`.

    With the defaults it is the paper's schedule: from ``1.0`` down to ``0.5``.
    """

    value: Tensor

    def __init__(self, start: float = 1.0, minimum: float = 0.5, rate: float = 1.0) -> None:
        super().__init__()
        self.start = checks.temperature("start", start)
        self.minimum = checks.temperature("minimum", minimum)
        if self.minimum > self.start:
            raise ValueError(f"minimum must be <= start ({self.start}), got {minimum!r}")
        self.rate = checks.non_negative("rate", rate)
        self.register_buffer("value", torch.tensor(self.start))

    def value_at(self, epoch: int, max_epochs: int) -> float:
        """``τ`` at ``epoch`` of ``max_epochs`` (``0 <= epoch``, ``max_epochs >= 1``)."""
        checks.integer("max_epochs", max_epochs)
        checks.integer("epoch", epoch, minimum=0)
        return max(self.minimum, self.start * math.exp(-self.rate * epoch / max_epochs))

    def step(self, epoch: int, max_epochs: int) -> None:
        self.value.fill_(self.value_at(epoch, max_epochs))

    def forward(self) -> Tensor:
        return self.value

    def extra_repr(self) -> str:
        return f"start={self.start}, minimum={self.minimum}, rate={self.rate}"


class LearnedTemperature(Temperature):
    """A learned ``τ = softplus(raw) + floor``, trained jointly with the circuit.

    Args:
        init: the initial ``τ`` (``> floor``).
        floor: the smallest ``τ`` reachable, keeping the selections' gradients finite (at least
            :data:`~pyro_spn.checks.MIN_TEMPERATURE`).
    """

    def __init__(self, init: float = 1.0, floor: float = 0.01) -> None:
        super().__init__()
        self.floor = checks.temperature("floor", floor)
        init = checks.temperature("init", init)
        if init <= self.floor:
            raise ValueError(f"init must be > floor ({self.floor}), got {init!r}")
        excess = init - self.floor
        raw = excess + math.log(-math.expm1(-excess))  # the inverse of softplus, without overflow for large τ
        self.raw = nn.Parameter(torch.tensor(raw))

    def forward(self) -> Tensor:
        return F.softplus(self.raw) + self.floor

    def extra_repr(self) -> str:
        return f"floor={self.floor}"


def make_temperature(kind: str, value: float = 1.0, minimum: float = 0.5, rate: float = 1.0) -> Temperature:
    """A schedule by name.

    Args:
        kind: ``"constant"`` (``τ = value``), ``"annealed"`` (from ``value`` down to ``minimum`` at
            ``rate``, see :class:`AnnealedTemperature`) or ``"learned"`` (initialized at ``value``).
        value: the constant, starting or initial ``τ``.
        minimum: the annealed schedule's floor (ignored by the other kinds).
        rate: the annealed schedule's decay rate (ignored by the other kinds).
    """
    checks.choice("kind", kind, KINDS)
    if kind == "constant":
        return ConstantTemperature(value)
    if kind == "annealed":
        return AnnealedTemperature(start=value, minimum=minimum, rate=rate)
    return LearnedTemperature(init=value)
