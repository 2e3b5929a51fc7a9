"""What a run trains, built from its config and the data's description: the network (a circuit, a joint circuit over
data and latents or label, or a neural baseline), the objective and the temperature."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..data import Dataset, Preprocessing
from ..distribution import SPNDistribution
from ..joint import JointSPN, MarginalSPNDistribution
from ..leaves import Binomial, Categorical, Leaf, Normal, leaf_from_config
from ..nets import VAE, Generator
from ..objectives import BANDWIDTH_FACTORS, BANDWIDTHS, ELBOObjective, Objective, make_objective, median_distance
from ..region_graphs import poon_domingos_trees, quad_tree, region_trees
from ..sampling import Interpolation
from ..spn import MAX_PARAMETERS, RatSPN
from ..structure import RandomBinaryTrees
from ..temperature import ConstantTemperature, Temperature, make_temperature
from .config import TrainConfig
from .pictures import histogram_log_density, save_density_picture, save_image_grid
from .records import SOFTWARE

MAX_AUTO_DEPTH = 4
PICTURE_SAMPLES = 64  # samples in a picture of images
DENSITY_POINTS = 1000  # samples (and at most as many data points) drawn on a density picture
PICTURE_IMPORTANCE = 8  # importance samples of the VAE's log-density on a density picture (65536 points)
HISTOGRAM_SAMPLES = 20000  # samples whose histogram stands in for the density of a model without a likelihood
GAN_BETAS = (0.5, 0.999)  # Adam's betas for the generators of the GAN and MMD-GAN baselines (DCGAN's)
Network = RatSPN | JointSPN | VAE | Generator
Distribution = SPNDistribution | MarginalSPNDistribution | VAE | Generator


@dataclass(frozen=True)
class DataInfo:
    """The facts about a data set that the model depends on (saved in checkpoints, so a run can be sampled without
    its data).

    Attributes:
        name: the data set.
        event_shape: the data's shape.
        leaf: the leaf family that models it.
        is_image: whether the data are images.
        num_classes: the number of class labels (``None`` for data sets without labels).
        median_distance: the median pairwise distance of the training data divided by :attr:`scale` (the scale of
            data-scaled MMD kernels; ``None`` in checkpoints of earlier versions).
        data_scale: model-space data divided by it lie in ``[0, 1]`` for images
            (:func:`~pyro_spn.data.model_scale` of the preprocessing; ``None`` in checkpoints of earlier versions,
            see :attr:`scale`).
    """

    name: str
    event_shape: tuple[int, ...]
    leaf: Leaf
    is_image: bool
    num_classes: int | None = None
    median_distance: float | None = None
    data_scale: float | None = None

    @classmethod
    def of(cls, dataset: Dataset) -> DataInfo:
        labels = dataset.train_labels
        num_classes = None if labels is None else int(labels.max()) + 1
        return cls(dataset.name, tuple(dataset.event_shape), dataset.leaf, dataset.is_image, num_classes,
                   median_distance(dataset.train / dataset.scale), dataset.scale)

    @property
    def scale(self) -> float:
        """Model-space data divided by it lie in ``[0, 1]`` for images: :attr:`data_scale`, or where it is unknown
        (a checkpoint of an earlier version, whose count data were all Binomial) the Binomial ``total_count``,
        else 1."""
        if self.data_scale is not None:
            return self.data_scale
        return float(self.leaf.total_count) if isinstance(self.leaf, Binomial) else 1.0

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "event_shape": list(self.event_shape), "leaf": self.leaf.to_config(),
                "is_image": self.is_image, "num_classes": self.num_classes, "median_distance": self.median_distance,
                "data_scale": self.data_scale}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> DataInfo:
        """The description :meth:`state_dict` wrote (or an earlier version's, whose ``leaf`` was a name with a
        separate ``total_count``)."""
        leaf = state["leaf"]
        if isinstance(leaf, str):
            leaf = {"type": leaf, **({"total_count": state["total_count"]} if leaf == "binomial" else {})}
        return cls(state["name"], tuple(state["event_shape"]), leaf_from_config(leaf), bool(state["is_image"]),
                   state.get("num_classes"), state.get("median_distance"), state.get("data_scale"))


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


def spn_structure(config: TrainConfig, info: DataInfo) -> RandomBinaryTrees | None:
    """The region graph of ``config.structure`` for data ``info`` (``None`` for ``"rat"``: the circuit draws its random
    trees itself), seeded by ``config.seed``: the same config always gives the same graph. Quad-trees and
    Poon-Domingos trees have ``config.num_repetitions`` trees of depth ``config.depth`` (or :func:`auto_depth`); the
    user's trees are ``config.region_graph``."""
    shape = info.event_shape
    if config.structure == "rat":
        return None
    if config.structure == "user":
        num_features = math.prod(shape[1:]) if len(shape) == 3 else math.prod(shape)
        return region_trees(config.region_graph or [], num_features, config.depth)
    if len(shape) != 3:
        raise ValueError(f"structure {config.structure} needs image data (C, H, W), got shape {shape}")
    depth = config.depth if config.depth is not None else auto_depth(shape)
    _, height, width = shape
    if config.structure == "quad-tree":
        return quad_tree(height, width, depth, config.num_repetitions, config.seed)
    return poon_domingos_trees(height, width, config.pd_delta, depth, config.num_repetitions, config.seed)


def spn_options(config: TrainConfig, info: DataInfo) -> dict[str, Any]:
    """The circuit's structure arguments from ``config`` for data ``info``: ``depth`` (the config's, or
    :func:`auto_depth` of the data), ``num_repetitions``, ``num_sums``, ``num_leaves``, ``seed``, and unless the
    structure is ``"rat"`` the region graph of :func:`spn_structure` (``structure``, whose depth and repetitions
    those are)."""
    structure = spn_structure(config, info)
    options: dict[str, Any] = {"num_sums": config.num_sums, "num_leaves": config.num_leaves, "seed": config.seed}
    if structure is None:
        depth = config.depth if config.depth is not None else auto_depth(info.event_shape)
        return {"depth": depth, "num_repetitions": config.num_repetitions, **options}
    return {"depth": structure.depth, "num_repetitions": structure.num_repetitions, "structure": structure,
            **options}


def extra_variables(config: TrainConfig, info: DataInfo) -> tuple[Leaf, int] | None:
    """The extra variables of the run's circuit besides the data: ``latent_dim`` Gaussian latents for PAE, the
    class label for class-conditional runs, none otherwise."""
    if config.objective == "pae":
        return Normal(), config.latent_dim
    if config.class_conditional:
        if info.num_classes is None or info.num_classes < 2:
            raise ValueError(f"class_conditional: the data set {info.name!r} has no class labels")
        return Categorical(info.num_classes), 1
    return None


def spn_num_parameters(config: TrainConfig, info: DataInfo) -> int:
    """The parameter count of the circuit ``config`` describes for data ``info`` (a baseline's budget), by
    arithmetic."""
    options = spn_options(config, info)
    del options["seed"]
    options.pop("structure", None)
    extra = extra_variables(config, info)
    if extra is None:
        return RatSPN.num_parameters(info.event_shape, leaf=info.leaf, **options)
    leaf = JointSPN.joint_leaf(info.event_shape, info.leaf, *extra)
    return RatSPN.num_parameters((math.prod(info.event_shape) + extra[1],), leaf=leaf, **options)


def check_size(config: TrainConfig, info: DataInfo) -> None:
    """Raises ``ValueError`` naming the options if the circuit ``config`` describes for data ``info`` (a baseline's
    parameter budget) would have more than :data:`~pyro_spn.spn.MAX_PARAMETERS` parameters: by arithmetic, before
    anything is built."""
    count = spn_num_parameters(config, info)
    if count > MAX_PARAMETERS:
        raise ValueError(f"num_sums, num_repetitions, num_leaves, depth: the circuit would have {count:.3g} "
                         f"parameters, more than the {MAX_PARAMETERS:.3g} allowed")


def mmd_bandwidths(config: TrainConfig, info: DataInfo) -> tuple[float, ...]:
    """The MMD kernels' bandwidths on data divided by ``info.scale``: :data:`~pyro_spn.objectives.BANDWIDTHS`
    (``mmd_bandwidths="fixed"``) or :data:`~pyro_spn.objectives.BANDWIDTH_FACTORS` times the training data's median
    pairwise distance (``"data"``)."""
    if config.mmd_bandwidths == "fixed":
        return BANDWIDTHS
    if info.median_distance is None:
        raise ValueError("mmd_bandwidths: 'data' needs the training data's median distance, which this run's "
                         "checkpoint (of an earlier version) does not hold")
    return tuple(factor * info.median_distance for factor in BANDWIDTH_FACTORS)


def _objective_options(config: TrainConfig, info: DataInfo) -> dict[str, Any]:
    """``make_objective`` options from the config; image data are scaled to ``[0, 1]`` pixels for Binomial leaves."""
    if config.objective == "adv":
        return {"lr": config.discriminator_lr, "discriminator_steps": config.discriminator_steps,
                "scale": info.scale, "estimator": config.estimator}
    if config.objective == "mmd":
        return {"kernel": "learned" if config.mmd_adversarial else "fixed", "encoder_lr": config.encoder_lr,
                "encoder_steps": config.discriminator_steps, "scale": info.scale, "estimator": config.estimator,
                "bandwidths": mmd_bandwidths(config, info)}
    if config.objective == "pae":
        return {"reconstruction": "mse" if isinstance(info.leaf, Normal) else "bce", "scale": info.scale,
                "estimator": config.estimator}
    return {}


class Model(nn.Module):
    """The trained parts of a run: the network (the circuit, a joint circuit, or a baseline of
    :mod:`pyro_spn.nets.baselines`), the objective (with its neural parts) and the temperature.

    Built by :meth:`build`; every module is created in a fixed order from the global torch RNG (seeded by the
    caller), so the same config and seed give the same initial model. A baseline has as many parameters as the
    circuit the same config describes (within 10 %) and a constant temperature (it has no sum nodes).
    """

    def __init__(self, network: Network, objective: Objective, temperature: Temperature, config: TrainConfig,
                 info: DataInfo) -> None:
        super().__init__()
        self.network = network
        self.objective = objective
        self.temperature = temperature
        self.kind = config.model
        self.class_conditional = config.class_conditional
        self.hard = config.estimator != "soft"
        self.interpolation: Interpolation = "region" if config.interpolation == "region" else "unit"
        self.info = info

    @classmethod
    def build(cls, config: TrainConfig, info: DataInfo) -> Model:
        """The model ``config`` describes for data ``info`` (refused by :func:`check_size` before anything is built
        if it is too large)."""
        assert config.objective is not None
        check_size(config, info)
        if config.model != "spn":
            return cls._build_baseline(config, info)
        objective = make_objective(config.objective, event_shape=info.event_shape, nll_weight=config.nll_weight,
                                   **_objective_options(config, info))
        extra = extra_variables(config, info)
        network: Network = (RatSPN(info.event_shape, leaf=info.leaf, **spn_options(config, info)) if extra is None
                            else JointSPN(info.event_shape, info.leaf, *extra, **spn_options(config, info)))
        temperature = make_temperature(config.temperature, config.tau, config.tau_min, config.tau_rate)
        return cls(network, objective, temperature, config, info)

    @classmethod
    def _build_baseline(cls, config: TrainConfig, info: DataInfo) -> Model:
        assert config.objective is not None
        budget = spn_num_parameters(config, info)
        objective = ELBOObjective() if config.model == "vae" else make_objective(
            config.objective, event_shape=info.event_shape, **_objective_options(config, info))
        kind = VAE if config.model == "vae" else Generator
        try:
            network: Network = kind.with_budget(info.event_shape, budget, leaf=info.leaf, latent_dim=config.latent_dim)
        except ValueError as error:
            raise ValueError(f"model {config.model}: its parameter budget is the circuit's ({budget}); {error} "
                             f"(raise num_repetitions, num_sums or num_leaves)") from None
        return cls(network, objective, ConstantTemperature(), config, info)

    @property
    def spn(self) -> RatSPN:
        """The circuit (``kind == "spn"`` only; a baseline's network is :attr:`network`)."""
        if isinstance(self.network, JointSPN):
            return self.network.spn
        if not isinstance(self.network, RatSPN):
            raise AttributeError(f"model {self.kind!r} has no circuit; its network is Model.network")
        return self.network

    @property
    def has_likelihood(self) -> bool:
        """Whether :meth:`log_likelihood` is defined (circuits, exact, and the VAE, a bound; not the GANs)."""
        return self.kind in ("spn", "vae")

    @property
    def can_reconstruct(self) -> bool:
        """Whether :meth:`reconstruct` is defined (the VAE and circuits over data and latents, trained by PAE)."""
        return self.kind == "vae" or (isinstance(self.network, JointSPN) and not self.class_conditional)

    def num_parameters(self) -> int:
        """The parameter count of the generative model: the circuit, the VAE's encoder and decoder, or the
        generator (not a discriminator, kernel encoder or temperature)."""
        return sum(p.numel() for p in self.network.parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the network's optimizer updates: the network's and a learned temperature's parameters (the
        objective's neural parts have their own optimizer)."""
        return [*self.network.parameters(), *self.temperature.parameters()]

    @property
    def adam_betas(self) -> tuple[float, float]:
        """Adam's betas for :meth:`trainable_parameters`: DCGAN's ``(0.5, 0.999)`` for the GAN baselines, else
        Adam's defaults."""
        return GAN_BETAS if self.kind in ("gan", "mmd-gan") else (0.9, 0.999)

    # -- the model as distributions ---------------------------------------------------------------------
    def data_distribution(self, temperature: Tensor | None = None, hard: bool | None = None) -> Distribution:
        """The model's distribution of the data (the circuit at temperature ``temperature``, default the schedule's
        current ``τ``; a joint circuit's data marginal; a baseline's network itself, which has the same sampling
        interface)."""
        network = self.network
        if isinstance(network, VAE | Generator):
            return network
        tau = self.temperature() if temperature is None else temperature
        hard = self.hard if hard is None else hard
        if isinstance(network, JointSPN):
            return network.distribution(temperature=tau, hard=hard, interpolation=self.interpolation)
        return SPNDistribution(network, temperature=tau, hard=hard, interpolation=self.interpolation)

    def distribution(self, temperature: Tensor | None = None) -> Distribution | SPNDistribution:
        """What the objective trains: :meth:`data_distribution`, or for a class-conditional circuit the joint over
        data and label (whose batches :meth:`training_batch` makes)."""
        d = self.data_distribution(temperature)
        return d.joint if self.class_conditional and isinstance(d, MarginalSPNDistribution) else d

    def training_batch(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """What the objective sees of a batch ``x [N, *event_shape]``: ``x``, or for a class-conditional circuit the
        joint of ``x`` and its ``labels [N]``."""
        if not self.class_conditional:
            return x
        if labels is None:
            raise ValueError("labels: a class-conditional run needs the data's labels")
        assert isinstance(self.network, JointSPN)
        return self.network.join(x, labels[:, None].to(x.device), extra_name="labels")

    # -- what a run writes ----------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.network.parameters()).device

    @torch.no_grad()
    def sample(self, n: int, batch_size: int) -> Tensor:
        """``n`` samples of the data ``[n, *event_shape]`` in model space, on the CPU, drawn in batches (exact for the
        circuits and the VAE)."""
        d = self.data_distribution()
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        return torch.cat([d.sample((size,)).cpu() for size in sizes])

    @torch.no_grad()
    def sample_given(self, labels: Tensor) -> Tensor:
        """Exact draws of the data given class ``labels [N]`` (class-conditional circuits), ``[N, *event_shape]`` on
        the CPU."""
        d = self.data_distribution()
        if not self.class_conditional or not isinstance(d, MarginalSPNDistribution):
            raise ValueError(f"model {self.kind!r} is not class-conditional; it cannot sample given labels")
        return d.sample_given(labels[:, None].to(self.device)).cpu()

    @torch.no_grad()
    def log_likelihood(self, x: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` of model-space data ``x [N, *event_shape]`` (on any device), on the CPU: exact for the
        circuits (a joint circuit's data marginal), the importance-weighted bound for the VAE.

        Raises:
            ValueError: the model has no likelihood (the GAN baselines).
        """
        d = self.data_distribution()
        if isinstance(d, Generator):
            raise ValueError(f"model {self.kind!r} has no likelihood (only spn and vae have one)")
        return d.log_prob(x.to(self.device)).cpu()

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Reconstructions ``[N, *event_shape]`` (model space, on the CPU) of model-space ``x [N, *event_shape]``: the
        VAE's decoder mean at the posterior mean, or a joint circuit's exact draw of ``x`` given the max-product
        completion of its latents.

        Raises:
            ValueError: the model cannot reconstruct (not a VAE, nor a circuit over data and latents).
        """
        d = self.data_distribution()
        if not self.can_reconstruct or not isinstance(d, VAE | MarginalSPNDistribution):
            raise ValueError(f"model {self.kind!r} with objective {self.objective.name!r} cannot reconstruct "
                             f"(only vae and circuits trained by pae can)")
        return d.reconstruct(x.to(self.device)).cpu()

    @torch.no_grad()
    def _picture_log_density(self, x: Tensor) -> Tensor:
        """:meth:`log_likelihood` of points ``x [M, 2]``, for the VAE with only ``PICTURE_IMPORTANCE`` importance
        samples; for a circuit over more than two variables the exact marginal of the first two."""
        if isinstance(self.network, VAE):
            return self.network.log_prob(x.to(self.device), PICTURE_IMPORTANCE).cpu()
        (size,) = self.info.event_shape
        if size > 2:
            x = torch.cat([x, x.new_full((x.shape[0], size - 2), float("nan"))], dim=1)
        return self.log_likelihood(x)

    @torch.no_grad()
    def save_picture(self, path: Path, preprocessing: Preprocessing, batch_size: int, data: Tensor | None = None,
                     samples: Tensor | None = None, software: str = SOFTWARE) -> None:
        """Images: a grid of samples (class-conditional circuits: a row per class). 2-D data: the density (the VAE's
        with ``PICTURE_IMPORTANCE`` importance samples; without a likelihood: a histogram of ``HISTOGRAM_SAMPLES``
        samples) with samples (red) and ``data`` (white, if given) as dots, over the range of ``data`` (or of the
        samples); data of more than two variables: the first two (a circuit's exact marginal), of one: no picture.
        ``samples`` (model space) are drawn if not given; ``software`` names what wrote the picture."""
        if samples is None and self.class_conditional and self.info.num_classes is not None:
            classes = self.info.num_classes
            samples = self.sample_given(torch.arange(classes).repeat_interleave(classes))
        if samples is None:
            samples = self.sample(PICTURE_SAMPLES if self.info.is_image else DENSITY_POINTS, batch_size)
        if self.info.is_image:
            save_image_grid(preprocessing.inverse(samples), path, software)
            return
        if samples.shape[-1] < 2:
            return  # one variable: no picture
        samples, data = samples[:, :2], None if data is None else data[:, :2]
        extent = samples if data is None else data
        exact = self.has_likelihood and (self.info.event_shape == (2,) or not isinstance(self.network, VAE))
        log_density = (self._picture_log_density if exact
                       else histogram_log_density(self.sample(HISTOGRAM_SAMPLES, HISTOGRAM_SAMPLES)[:, :2], extent))
        save_density_picture(log_density, path, extent=extent, samples=samples,
                             data=None if data is None else data[:DENSITY_POINTS], software=software)
