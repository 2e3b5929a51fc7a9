"""What a run trains, built from its config and the data's description: circuit, objective, temperature."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset
from ..distribution import SPNDistribution
from ..leaves import Bernoulli, Binomial, Leaf, Normal
from ..objectives import Objective, make_objective
from ..spn import RatSPN
from ..temperature import Temperature, make_temperature
from .config import TrainConfig

MAX_AUTO_DEPTH = 4


@dataclass(frozen=True)
class DataInfo:
    """The facts about a data set that the model depends on (saved in checkpoints, so a run can be
    sampled without its data)."""

    name: str
    event_shape: tuple[int, ...]
    leaf: str
    total_count: int | None
    is_image: bool

    @classmethod
    def of(cls, dataset: Dataset) -> DataInfo:
        return cls(dataset.name, tuple(dataset.event_shape), dataset.leaf, dataset.total_count, dataset.is_image)

    def state_dict(self) -> dict[str, Any]:
        return {**asdict(self), "event_shape": list(self.event_shape)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DataInfo:
        return cls(**{**state, "event_shape": tuple(state["event_shape"])})


def make_leaf(leaf: str, total_count: int | None) -> Leaf:
    """A fresh leaf layer of type ``leaf`` (``"binomial"`` needs ``total_count``)."""
    if leaf == "binomial":
        return Binomial(total_count=total_count)
    if leaf == "normal":
        return Normal()
    if leaf == "bernoulli":
        return Bernoulli()
    raise ValueError(f"leaf must be one of binomial, normal, bernoulli; got {leaf!r}")


def auto_depth(event_shape: tuple[int, ...]) -> int:
    """``min(4, floor(log2 F))`` (at least 1) for ``F`` variables (pixels, not channels, for images)."""
    num_features = math.prod(event_shape[1:]) if len(event_shape) == 3 else math.prod(event_shape)
    return max(1, min(MAX_AUTO_DEPTH, int(math.log2(num_features))))


def resolve_device(device: str) -> torch.device:
    """``"auto"`` → CUDA if available, else CPU; ``"cuda"`` without CUDA is a ``ValueError``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for, but CUDA is not available here (use --device cpu)")
    return torch.device(device)


class Model(nn.Module):
    """The trained parts of a run: the circuit, the objective (with its neural parts) and the temperature.

    Built by :meth:`build`; every module is created in a fixed order from the global torch RNG (seeded by
    the caller), so the same config and seed give the same initial model.
    """

    def __init__(self, spn: RatSPN, objective: Objective, temperature: Temperature, config: TrainConfig) -> None:
        super().__init__()
        self.spn = spn
        self.objective = objective
        self.temperature = temperature
        self.hard = config.straight_through
        self.interpolation = config.interpolation

    @classmethod
    def build(cls, config: TrainConfig, info: DataInfo) -> Model:
        """The model ``config`` describes for data ``info``."""
        objective = make_objective(config.objective, event_shape=info.event_shape, nll_weight=config.nll_weight,
                                   **_objective_options(config, info))
        depth = config.depth if config.depth is not None else auto_depth(info.event_shape)
        spn = objective.build_spn(info.event_shape, make_leaf(info.leaf, info.total_count), depth=depth,
                                  num_repetitions=config.num_repetitions, num_sums=config.num_sums,
                                  num_leaves=config.num_leaves, seed=config.seed)
        temperature = make_temperature(config.temperature, config.tau, config.tau_min, config.tau_rate)
        return cls(spn, objective, temperature, config)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the circuit's optimizer updates: the circuit's and a learned temperature's parameters
        (the objective's neural parts have their own optimizer)."""
        return [*self.spn.parameters(), *self.temperature.parameters()]

    def distribution(self, temperature: Tensor | None = None) -> SPNDistribution:
        """The circuit as a distribution at temperature ``temperature`` (default: the schedule's current ``τ``)."""
        tau = self.temperature() if temperature is None else temperature
        return SPNDistribution(self.spn, temperature=tau, hard=self.hard, interpolation=self.interpolation)


def _objective_options(config: TrainConfig, info: DataInfo) -> dict[str, Any]:
    """``make_objective`` options from the config; data are scaled to ``[0, 1]`` pixels for Binomial leaves."""
    scale = float(info.total_count) if info.leaf == "binomial" else 1.0
    if config.objective == "adv":
        return {"lr": config.discriminator_lr, "discriminator_steps": config.discriminator_steps, "scale": scale}
    if config.objective == "mmd":
        return {"kernel": "learned" if config.mmd_adversarial else "fixed", "encoder_lr": config.encoder_lr,
                "encoder_steps": config.discriminator_steps, "scale": scale}
    if config.objective == "pae":
        return {"latent_dim": config.latent_dim, "reconstruction": "mse" if info.leaf == "normal" else "bce",
                "scale": scale}
    return {}
