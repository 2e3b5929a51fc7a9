"""What a run trains, built from its config and the data's description: circuit, objective, temperature."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset, Preprocessing
from ..distribution import SPNDistribution
from ..leaves import Bernoulli, Binomial, Leaf, Normal
from ..objectives import Objective, make_objective
from ..spn import RatSPN
from ..temperature import Temperature, make_temperature
from .config import TrainConfig
from .pictures import save_density_picture, save_image_grid

MAX_AUTO_DEPTH = 4
PICTURE_SAMPLES = 64  # samples in a picture of images
DENSITY_POINTS = 1000  # samples (and at most as many data points) drawn on a density picture


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

    def __init__(self, spn: RatSPN, objective: Objective, temperature: Temperature, config: TrainConfig,
                 info: DataInfo) -> None:
        super().__init__()
        self.spn = spn
        self.objective = objective
        self.temperature = temperature
        self.hard = config.straight_through
        self.interpolation = config.interpolation
        self.info = info

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
        return cls(spn, objective, temperature, config, info)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the circuit's optimizer updates: the circuit's and a learned temperature's parameters
        (the objective's neural parts have their own optimizer)."""
        return [*self.spn.parameters(), *self.temperature.parameters()]

    def distribution(self, temperature: Tensor | None = None) -> SPNDistribution:
        """The circuit as a distribution at temperature ``temperature`` (default: the schedule's current ``τ``)."""
        tau = self.temperature() if temperature is None else temperature
        return SPNDistribution(self.spn, temperature=tau, hard=self.hard, interpolation=self.interpolation)

    @property
    def device(self) -> torch.device:
        return self.spn.root.logits.device

    @torch.no_grad()
    def sample(self, n: int, batch_size: int) -> Tensor:
        """``n`` exact samples of the data ``[n, *event_shape]`` in model space, on the CPU, drawn in batches."""
        d = self.distribution()
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        return torch.cat([self.objective.sample(d, size).cpu() for size in sizes])

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` of model-space data ``x [N, *event_shape]`` (on any device), on the CPU."""
        return self.objective.log_likelihood(self.distribution(), x.to(self.device)).cpu()

    @torch.no_grad()
    def save_picture(self, path: Path, preprocessing: Preprocessing, batch_size: int, data: Tensor | None = None,
                     samples: Tensor | None = None) -> None:
        """Images: a grid of samples. 2-D data: the density with samples (red) and ``data`` (white, if given)
        as dots, over the range of ``data`` (or of the samples). ``samples`` (model space) are drawn if not given."""
        if samples is None:
            samples = self.sample(PICTURE_SAMPLES if self.info.is_image else DENSITY_POINTS, batch_size)
        if self.info.is_image:
            save_image_grid(preprocessing.inverse(samples), path)
            return
        save_density_picture(self.log_likelihood, path, extent=samples if data is None else data,
                             samples=samples, data=None if data is None else data[:DENSITY_POINTS])


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
