"""What a run trains, built from its config and the data's description: the circuit (or a neural baseline),
the objective and the temperature."""

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
from ..nets import VAE, Generator
from ..objectives import AutoEncodingObjective, HybridObjective, Objective, make_objective
from ..spn import RatSPN
from ..temperature import ConstantTemperature, Temperature, make_temperature
from .config import TrainConfig
from .pictures import histogram_log_density, save_density_picture, save_image_grid

MAX_AUTO_DEPTH = 4
PICTURE_SAMPLES = 64  # samples in a picture of images
DENSITY_POINTS = 1000  # samples (and at most as many data points) drawn on a density picture
PICTURE_IMPORTANCE = 8  # importance samples of the VAE's log-density on a density picture (65536 points)
HISTOGRAM_SAMPLES = 20000  # samples whose histogram stands in for the density of a model without a likelihood
GAN_BETAS = (0.5, 0.999)  # Adam's betas for the generators of the GAN and MMD-GAN baselines (DCGAN's)
Network = RatSPN | VAE | Generator


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


class ELBOObjective(Objective):
    """The VAE baseline's objective (``"ll"`` for ``model="vae"``): the negative ELBO; validation uses the
    importance-weighted ``log p(x)`` (:meth:`~pyro_spn.nets.VAE.log_prob`)."""

    name = "ll"

    def loss(self, d: VAE, x: Tensor) -> Tensor:
        """``−mean ELBO`` of the batch ``x [N, *event_shape]``, a scalar."""
        return d.loss(x)


class Model(nn.Module):
    """The trained parts of a run: the generative network (the circuit, or a baseline of
    :mod:`pyro_spn.nets.baselines`), the objective (with its neural parts) and the temperature.

    Built by :meth:`build`; every module is created in a fixed order from the global torch RNG (seeded by
    the caller), so the same config and seed give the same initial model. A baseline has as many parameters
    as the circuit the same config describes (within 10 %) and a constant temperature (it has no sum nodes).
    """

    def __init__(self, network: Network, objective: Objective, temperature: Temperature, config: TrainConfig,
                 info: DataInfo) -> None:
        super().__init__()
        self.network = network
        self.objective = objective
        self.temperature = temperature
        self.kind = config.model
        self.hard = config.straight_through
        self.interpolation = config.interpolation
        self.info = info

    @classmethod
    def build(cls, config: TrainConfig, info: DataInfo) -> Model:
        """The model ``config`` describes for data ``info``."""
        if config.model != "spn":
            return cls._build_baseline(config, info)
        objective = make_objective(config.objective, event_shape=info.event_shape, nll_weight=config.nll_weight,
                                   **_objective_options(config, info))
        leaf = make_leaf(info.leaf, info.total_count)
        spn = objective.build_spn(info.event_shape, leaf, **spn_options(config, info))
        temperature = make_temperature(config.temperature, config.tau, config.tau_min, config.tau_rate)
        return cls(spn, objective, temperature, config, info)

    @classmethod
    def _build_baseline(cls, config: TrainConfig, info: DataInfo) -> Model:
        budget = spn_num_parameters(config, info)
        options = {"leaf": info.leaf, "total_count": info.total_count, "latent_dim": config.latent_dim}
        if config.model == "vae":
            objective: Objective = ELBOObjective()
        else:
            objective = make_objective(config.objective, event_shape=info.event_shape,
                                       **_objective_options(config, info))
        try:
            network: Network = (VAE if config.model == "vae" else Generator).with_budget(info.event_shape, budget,
                                                                                          **options)
        except ValueError as error:
            raise ValueError(f"model {config.model}: its parameter budget is the circuit's ({budget}); {error} "
                             f"(raise num_repetitions, num_sums or num_leaves)") from None
        return cls(network, objective, ConstantTemperature(), config, info)

    @property
    def spn(self) -> RatSPN:
        """The circuit (``kind == "spn"`` only; a baseline's network is :attr:`network`)."""
        if not isinstance(self.network, RatSPN):
            raise AttributeError(f"model {self.kind!r} has no circuit; its network is Model.network")
        return self.network

    @property
    def has_likelihood(self) -> bool:
        """Whether :meth:`log_likelihood` is defined (the circuit, exact, and the VAE, a bound; not the GANs)."""
        return self.kind in ("spn", "vae")

    @property
    def can_reconstruct(self) -> bool:
        """Whether :meth:`reconstruct` is defined (the VAE and circuits trained by PAE)."""
        return self.kind == "vae" or self._autoencoding() is not None

    def _autoencoding(self) -> AutoEncodingObjective | None:
        base = self.objective.base if isinstance(self.objective, HybridObjective) else self.objective
        return base if isinstance(base, AutoEncodingObjective) else None

    def num_parameters(self) -> int:
        """The parameter count of the generative model: the circuit, the VAE's encoder and decoder, or the
        generator (not a discriminator, kernel encoder or temperature)."""
        return sum(p.numel() for p in self.network.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the network's optimizer updates: the network's and a learned temperature's parameters
        (the objective's neural parts have their own optimizer)."""
        return [*self.network.parameters(), *self.temperature.parameters()]

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's betas for :meth:`trainable_parameters`: DCGAN's ``(0.5, 0.999)`` for the GAN baselines,
        else Adam's defaults."""
        return GAN_BETAS if self.kind in ("gan", "mmd-gan") else (0.9, 0.999)

    def distribution(self, temperature: Tensor | None = None) -> SPNDistribution | VAE | Generator:
        """The circuit as a distribution at temperature ``temperature`` (default: the schedule's current ``τ``);
        a baseline's network itself (it has the same sampling interface)."""
        if not isinstance(self.network, RatSPN):
            return self.network
        tau = self.temperature() if temperature is None else temperature
        return SPNDistribution(self.network, temperature=tau, hard=self.hard, interpolation=self.interpolation)

    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, batch_size: int) -> Tensor:
        """``n`` samples of the data ``[n, *event_shape]`` in model space, on the CPU, drawn in batches (exact for
        the circuit and the VAE)."""
        d = self.distribution()
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        return torch.cat([self.objective.sample(d, size).cpu() for size in sizes])

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` of model-space data ``x [N, *event_shape]`` (on any device), on the CPU: exact for
        the circuit, the importance-weighted bound for the VAE.

        Raises:
            ValueError: the model has no likelihood (the GAN baselines).
        """
        if not self.has_likelihood:
            raise ValueError(f"model {self.kind!r} has no likelihood (only spn and vae have one)")
        return self.objective.log_likelihood(self.distribution(), x.to(self.device)).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions ``[N, *event_shape]`` (model space, on the CPU) of model-space ``x [N, *event_shape]``:
        the VAE's decoder mean at the posterior mean, or PAE's ``decode(encode(x))`` with exact conditional
        draws (straight-through distribution).

        Raises:
            ValueError: the model cannot reconstruct (not a VAE, nor a circuit trained by PAE).
        """
        x = x.to(self.device)
        if isinstance(self.network, VAE):
            return self.network.reconstruct(x).cpu()
        autoencoding = self._autoencoding()
        if autoencoding is None:
            raise ValueError(f"model {self.kind!r} with objective {self.objective.name!r} cannot reconstruct "
                             f"(only vae and circuits trained by pae can)")
        d = SPNDistribution(self.network, temperature=self.temperature(), hard=True, interpolation=self.interpolation)
        return autoencoding.reconstruct(d, x).cpu()

    @torch.no_grad()
    def _picture_log_density(self, x: Tensor) -> Tensor:
        """:meth:`log_likelihood`, for the VAE with only ``PICTURE_IMPORTANCE`` importance samples."""
        if isinstance(self.network, VAE):
            return self.network.log_prob(x.to(self.device), PICTURE_IMPORTANCE).cpu()
        return self.log_likelihood(x)

    @torch.no_grad()
    def save_picture(self, path: Path, preprocessing: Preprocessing, batch_size: int, data: Tensor | None = None,
                     samples: Tensor | None = None) -> None:
        """Images: a grid of samples. 2-D data: the density (the VAE's with ``PICTURE_IMPORTANCE`` importance
        samples; without a likelihood: a histogram of ``HISTOGRAM_SAMPLES`` samples) with samples (red) and
        ``data`` (white, if given) as dots, over the range of ``data`` (or of the samples). ``samples`` (model
        space) are drawn if not given."""
        if samples is None:
            samples = self.sample(PICTURE_SAMPLES if self.info.is_image else DENSITY_POINTS, batch_size)
        if self.info.is_image:
            save_image_grid(preprocessing.inverse(samples), path)
            return
        extent = samples if data is None else data
        log_density = (self._picture_log_density if self.has_likelihood
                       else histogram_log_density(self.sample(HISTOGRAM_SAMPLES, HISTOGRAM_SAMPLES), extent))
        save_density_picture(log_density, path, extent=extent, samples=samples,
                             data=None if data is None else data[:DENSITY_POINTS])


def spn_num_parameters(config: TrainConfig, info: DataInfo) -> int:
    """The parameter count of the circuit over the data that ``config`` describes for data ``info`` (its
    ``num_repetitions``, ``num_sums``, ``num_leaves``, ``depth`` and the leaf type): a baseline's budget."""
    spn = RatSPN(info.event_shape, leaf=make_leaf(info.leaf, info.total_count), **spn_options(config, info))
    return sum(p.numel() for p in spn.parameters())


def spn_options(config: TrainConfig, info: DataInfo) -> dict[str, Any]:
    """``RatSPN``'s structure arguments from ``config`` (``depth``: the config's, or :func:`auto_depth` of the
    data), for data ``info``."""
    depth = config.depth if config.depth is not None else auto_depth(info.event_shape)
    return {"depth": depth, "num_repetitions": config.num_repetitions, "num_sums": config.num_sums,
            "num_leaves": config.num_leaves, "seed": config.seed}


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
