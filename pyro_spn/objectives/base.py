"""The interface every objective implements, and what objectives may assume of a model."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@runtime_checkable
class Generative(Protocol):
    """What a sample-based objective trains: anything with differentiable samples, such as
    :class:`~pyro_spn.SPNDistribution` or a GAN :class:`~pyro_spn.nets.Generator`."""

    def rsample(self, sample_shape: Sequence[int] = ...) -> Tensor:
        """Differentiable samples ``[*sample_shape, *event_shape]``."""
        ...


@runtime_checkable
class Density(Protocol):
    """What the likelihood objective trains: anything with a differentiable ``log_prob``."""

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(value)`` ``[N]`` of ``value [N, *event_shape]``."""
        ...


@runtime_checkable
class EvidenceBound(Protocol):
    """What the ELBO objective trains: a latent-variable model with an evidence lower bound, such as the
    :class:`~pyro_spn.nets.VAE` baseline."""

    def elbo(self, x: Tensor) -> Tensor:
        """A lower bound of ``log p(x)``, ``[N]``, for ``x [N, *event_shape]``."""
        ...


@runtime_checkable
class AutoEncoder(Protocol):
    """What the auto-encoding objective trains: an encoder of data into extra variables and a differentiable
    decoder back, such as :class:`~pyro_spn.joint.MarginalSPNDistribution`."""

    def encode(self, x: Tensor) -> Tensor:
        """``x [N, *event_shape]`` → codes ``[N, E]``."""
        ...

    def decode(self, extra: Tensor) -> Tensor:
        """Codes ``[N, E]`` → differentiable reconstructions ``[N, *event_shape]``."""
        ...


class Objective(nn.Module, metaclass=abc.ABCMeta):
    """A training loss over a distribution (or any model with the methods the loss uses) and a data batch,
    usable without a trainer.

    The loss is minimized w.r.t. the model's parameters (and a learned temperature's). Objectives with neural
    parts (a discriminator, a kernel encoder) update them in :meth:`auxiliary_step` with their own optimizer,
    whose state is part of the objective's ``state_dict`` (so a checkpoint of the objective resumes it). Data are
    passed in model space (e.g. Binomial counts ``0..N``). A training step::

        metrics = objective.auxiliary_step(d, x)
        objective.loss(d, x).backward()
        model_optimizer.step()
    """

    name: str = ""
    optimizer: torch.optim.Optimizer | None = None

    @abc.abstractmethod
    def loss(self, d: Any, x: Tensor) -> Tensor:
        """The scalar loss of the batch ``x [N, *event_shape]`` under the model ``d``."""

    def auxiliary_step(self, d: Any, x: Tensor) -> dict[str, float]:
        """Updates the objective's own neural parts on ``x [N, *event_shape]``; returns metrics."""
        return {}

    def get_extra_state(self) -> dict[str, Any]:
        return {} if self.optimizer is None else {"optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if self.optimizer is not None and "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])


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
