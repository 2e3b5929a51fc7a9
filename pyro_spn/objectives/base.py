"""The interface every objective implements."""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from numbers import Real
from typing import Any

import torch
from torch import Tensor, nn

from ..distribution import SPNDistribution
from ..leaves import Leaf
from ..spn import RatSPN


class Objective(nn.Module, metaclass=abc.ABCMeta):
    """A training loss over an :class:`~pyro_spn.SPNDistribution` and a data batch, usable without a trainer.

    The loss is minimized w.r.t. the circuit's parameters (and a learned temperature's). Objectives with
    neural parts (a discriminator, a kernel encoder) update them in :meth:`auxiliary_step` with their
    own optimizer, whose state is part of the objective's ``state_dict`` (so a checkpoint of the
    objective resumes it). Data are passed in model space (e.g. Binomial counts ``0..N``).

    A trainer step::

        metrics = objective.auxiliary_step(d, x)
        objective.loss(d, x).backward()
        spn_optimizer.step()
    """

    name: str = ""
    optimizer: torch.optim.Optimizer | None = None

    @abc.abstractmethod
    def loss(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """The scalar loss of the batch ``x [N, *event_shape]``."""

    def auxiliary_step(self, d: SPNDistribution, x: Tensor) -> dict[str, float]:
        """Updates the objective's own neural parts on ``x [N, *event_shape]``; returns metrics."""
        return {}

    def log_likelihood(self, d: SPNDistribution, x: Tensor) -> Tensor:
        """``log p(x)``, shape ``[N]``, for validation."""
        return d.log_prob(x)

    def sample(self, d: SPNDistribution, n: int) -> Tensor:
        """``n`` exact samples ``[n, *data_event_shape]`` (no gradient)."""
        return d.sample((n,))

    def build_spn(self, event_shape: int | Sequence[int], leaf: Leaf, *, depth: int, num_repetitions: int,
                  num_sums: int, num_leaves: int, seed: int = 0) -> RatSPN:
        """The circuit this objective trains, for data of ``event_shape`` with leaves ``leaf``
        (a circuit over the data itself unless the objective models more, as PAE does)."""
        return RatSPN(event_shape, depth=depth, num_repetitions=num_repetitions, num_sums=num_sums,
                      num_leaves=num_leaves, leaf=leaf, seed=seed)

    def get_extra_state(self) -> dict[str, Any]:
        return {} if self.optimizer is None else {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


def positive(name: str, value: float) -> float:
    """``value`` as a float if it is a finite number ``> 0``; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_steps(name: str, steps: int) -> int:
    """``steps`` if it is an integer ``>= 1``; a ``ValueError`` naming ``name`` otherwise."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {steps!r}")
    return steps


def check_betas(betas: tuple[float, float]) -> tuple[float, float]:
    """Adam's ``betas`` if both lie in ``[0, 1)``."""
    if (not isinstance(betas, Sequence) or len(betas) != 2
            or any(isinstance(b, bool) or not isinstance(b, Real) or not 0 <= b < 1 for b in betas)):
        raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
    return float(betas[0]), float(betas[1])


def check_module(name: str, module: nn.Module) -> nn.Module:
    """``module`` if it is an ``nn.Module`` with trainable parameters."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(module).__name__}")
    if not any(p.requires_grad for p in module.parameters()):
        raise ValueError(f"{name} must have trainable parameters")
    return module


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Builds graphs through ``module`` without gradients for its parameters (inputs still get theirs)."""
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
