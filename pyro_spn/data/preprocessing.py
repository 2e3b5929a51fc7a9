"""Invertible maps from raw data to the values a leaf type models, with a serializable state.

Raw image data are integer counts ``0..max_value`` (``max_value`` 255 for 8-bit images, 16 for digits) of
shape ``[N, C, H, W]`` in any dtype; raw 2-D data are float coordinates ``[N, 2]``. ``forward`` maps raw
data to model space (always ``float32``), ``inverse`` maps model-space values back to data units: images
to floats in ``[0, 1]``, 2-D points to raw coordinates.

Images take one leaf family, by its name on the command line (:data:`IMAGE_LEAVES`; :func:`image_leaf`,
:func:`image_preprocessing`): integer counts for the count families (Binomial, Poisson, Geometric,
NegativeBinomial), binarized for Bernoulli, standardized for Normal, and dequantized into ``(0, 1)`` for the
continuous families of positive or unit-interval support (Exponential, Gamma, LogNormal, Beta).

The state (``state_dict``) is a flat dict of strings, numbers and tensors, so a checkpoint loaded with
``torch.load(..., weights_only=True)`` can hold it; ``Preprocessing.from_state_dict`` rebuilds the object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from .. import checks
from ..leaves import (
    Bernoulli,
    Beta,
    Binomial,
    Exponential,
    Gamma,
    Geometric,
    Leaf,
    LogNormal,
    NegativeBinomial,
    Normal,
    Poisson,
)

State = dict[str, Tensor | float | int | str]

_CHUNK = 4096  # rows per chunk: bounds the float temporaries for large image sets (CelebA)
_MIN_STD = 1e-6  # features whose train std is below this (e.g. always-black corner pixels) keep std 1
_COUNT_LEAVES = ("binomial", "poisson", "geometric", "negative-binomial")
_DEQUANTIZED_LEAVES = ("exponential", "gamma", "lognormal", "beta")
#: The leaf families of image data, by their name on the command line (``pyrospn-train --leaf``).
IMAGE_LEAVES: tuple[str, ...] = ("binomial", "normal", "bernoulli", "poisson", "geometric", "negative-binomial",
                                 "exponential", "gamma", "beta", "lognormal")


def _map_rows(raw: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Applies ``fn`` to ``float32`` chunks of rows of ``raw`` ``[N, ...]``; returns ``float32`` ``[N, ...]``."""
    out = torch.empty(raw.shape, dtype=torch.float32)
    for start in range(0, raw.shape[0], _CHUNK):
        out[start : start + _CHUNK] = fn(raw[start : start + _CHUNK].to(torch.float32))
    return out


class Preprocessing(ABC):
    """Base class: ``forward(raw)`` into model space, ``inverse(x)`` back to data units, serializable state."""

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Preprocessing]]] = {}

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:  # concrete subclasses name themselves
            Preprocessing._registry[cls.kind] = cls

    @abstractmethod
    def forward(self, raw: Tensor) -> Tensor:
        """Raw data ``[N, *event_shape]`` → model-space ``float32`` ``[N, *event_shape]``."""

    @abstractmethod
    def inverse(self, x: Tensor) -> Tensor:
        """Model-space values ``[..., *event_shape]`` → data units, same shape (images: ``[0, 1]``)."""

    @abstractmethod
    def _state(self) -> State:
        """The constructor arguments as a dict of strings, numbers and tensors."""

    def __call__(self, raw: Tensor) -> Tensor:
        return self.forward(raw)

    def state_dict(self) -> State:
        """The state as a flat dict (``"kind"`` names the subclass); tensors are detached CPU copies."""
        state: State = {"kind": self.kind}
        for key, value in self._state().items():
            state[key] = value.detach().cpu().clone() if isinstance(value, Tensor) else value
        return state

    @staticmethod
    def from_state_dict(state: State) -> Preprocessing:
        """Rebuilds the preprocessing saved by :meth:`state_dict`."""
        kinds = tuple(Preprocessing._registry)
        kind = state.get("kind")
        if kind not in Preprocessing._registry:
            raise ValueError(f"state['kind'] must be one of {kinds}, got {kind!r}")
        arguments = {key: value for key, value in state.items() if key != "kind"}
        return Preprocessing._registry[str(kind)](**arguments)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v}" for k, v in self._state().items() if not isinstance(v, Tensor))
        return f"{type(self).__name__}({fields})"


class Identity(Preprocessing):
    """Raw values are the model's values (2-D sets with Normal leaves): ``forward`` only casts to ``float32``."""

    kind = "identity"

    def forward(self, raw: Tensor) -> Tensor:
        return raw.to(torch.float32)

    def inverse(self, x: Tensor) -> Tensor:
        return x

    def _state(self) -> State:
        return {}


class _Scaled(Preprocessing, ABC):
    """Preprocessing of integer counts ``0..max_value``."""

    def __init__(self, max_value: int) -> None:
        if isinstance(max_value, bool) or not isinstance(max_value, int) or max_value < 1:
            raise ValueError(f"max_value must be an integer >= 1, got {max_value!r}")
        self.max_value = max_value

    def _state(self) -> State:
        return {"max_value": self.max_value}


class Counts(_Scaled):
    """Binomial leaves: integer counts ``0..max_value`` as ``float32``; ``inverse`` divides by ``max_value``."""

    kind = "counts"

    def forward(self, raw: Tensor) -> Tensor:
        return _map_rows(raw, lambda chunk: chunk)

    def inverse(self, x: Tensor) -> Tensor:
        return (x / self.max_value).clamp(0.0, 1.0)


class Binarize(_Scaled):
    """Bernoulli leaves: ``1`` where ``raw > max_value / 2`` (half range), else ``0``; ``inverse`` clamps to [0, 1]."""

    kind = "binarize"

    def forward(self, raw: Tensor) -> Tensor:
        return _map_rows(raw, lambda chunk: (chunk > self.max_value / 2).to(torch.float32))

    def inverse(self, x: Tensor) -> Tensor:
        return x.clamp(0.0, 1.0)


class Standardize(_Scaled):
    """Normal leaves on images: per-feature zero mean, unit variance on the training split.

    ``forward(raw) = (raw / max_value - mean) / std``; ``inverse(x) = clamp(x * std + mean, 0, 1)``.
    ``mean`` and ``std`` have shape ``event_shape`` and are in ``[0, 1]`` units; features with a train std
    below ``1e-6`` (constant pixels) keep ``std = 1`` so that they stay finite on other splits.
    """

    kind = "standardize"

    def __init__(self, max_value: int, mean: Tensor, std: Tensor) -> None:
        super().__init__(max_value)
        if mean.shape != std.shape:
            raise ValueError(f"mean and std must have the same shape, got {tuple(mean.shape)} and {tuple(std.shape)}")
        if not bool((std > 0).all()):
            raise ValueError("std must be > 0 everywhere")
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    @classmethod
    def fit(cls, raw_train: Tensor, max_value: int) -> Standardize:
        """Statistics of the training counts ``[N, *event_shape]`` (float64 accumulation, in row chunks)."""
        total = torch.zeros(raw_train.shape[1:], dtype=torch.float64)
        total_sq = torch.zeros_like(total)
        for start in range(0, raw_train.shape[0], _CHUNK):
            chunk = raw_train[start : start + _CHUNK].to(torch.float64) / max_value
            total += chunk.sum(0)
            total_sq += chunk.square().sum(0)
        n = raw_train.shape[0]
        mean = total / n
        std = (total_sq / n - mean.square()).clamp_min(0.0).sqrt()
        std = torch.where(std < _MIN_STD, torch.ones_like(std), std)
        return cls(max_value, mean, std)

    def forward(self, raw: Tensor) -> Tensor:
        return _map_rows(raw, lambda chunk: (chunk / self.max_value - self.mean) / self.std)

    def inverse(self, x: Tensor) -> Tensor:
        return (x * self.std.to(x.device) + self.mean.to(x.device)).clamp(0.0, 1.0)

    def _state(self) -> State:
        return {"max_value": self.max_value, "mean": self.mean, "std": self.std}


class Dequantize(_Scaled):
    """Continuous leaves of support ``x >= 0`` or ``[0, 1]`` (Exponential, Gamma, LogNormal, Beta) on images: counts
    dequantized into the open interval ``(0, 1)``, ``(raw + u) / (max_value + 1)`` with uniform noise ``u`` drawn from
    ``seed`` (the same input gives the same output), kept within ``[ε, 1 − ε]`` of float32.

    ``inverse(x) = clamp((x (max_value + 1) − ½) / max_value, 0, 1)``: the middle of each count's interval goes back
    to the count's pixel value.
    """

    kind = "dequantize"

    def __init__(self, max_value: int, seed: int = 0) -> None:
        super().__init__(max_value)
        self.seed = checks.integer("seed", seed, minimum=0, maximum=2**63 - 1)

    def forward(self, raw: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        eps = torch.finfo(torch.float32).eps

        def dequantize(chunk: Tensor) -> Tensor:
            noise = torch.rand(chunk.shape, generator=generator, dtype=torch.float64)
            return ((chunk.double() + noise) / (self.max_value + 1)).clamp(eps, 1 - eps).float()

        return _map_rows(raw, dequantize)

    def inverse(self, x: Tensor) -> Tensor:
        return ((x * (self.max_value + 1) - 0.5) / self.max_value).clamp(0.0, 1.0)

    def _state(self) -> State:
        return {"max_value": self.max_value, "seed": self.seed}


def leaf_choice(leaf: object, accepted: tuple[str, ...]) -> str:
    """``leaf`` as one of the command-line names ``accepted`` (a family's config name, :attr:`Leaf.name`, such as
    ``negative_binomial``, is taken for its command-line name ``negative-binomial``); ``ValueError`` naming them."""
    name = leaf.replace("_", "-") if isinstance(leaf, str) else leaf
    return checks.choice("leaf", name, accepted)


def image_leaf(leaf: str, max_value: int) -> Leaf:
    """The spec of leaf family ``leaf`` (one of :data:`IMAGE_LEAVES`) for images of counts ``0..max_value``:
    ``Binomial(total_count=max_value)``, ``NegativeBinomial(total_count=max_value)``, the others without
    hyper-parameters."""
    specs: dict[str, Leaf] = {
        "binomial": Binomial(total_count=max_value), "normal": Normal(), "bernoulli": Bernoulli(),
        "poisson": Poisson(), "geometric": Geometric(), "negative-binomial": NegativeBinomial(total_count=max_value),
        "exponential": Exponential(), "gamma": Gamma(), "beta": Beta(), "lognormal": LogNormal(),
    }
    return specs[checks.choice("leaf", leaf, IMAGE_LEAVES)]


def image_preprocessing(leaf: str, max_value: int, raw_train: Tensor, seed: int) -> Preprocessing:
    """The preprocessing of images of counts ``0..max_value`` for leaf family ``leaf`` (one of
    :data:`IMAGE_LEAVES`): :class:`Counts` for the count families, :class:`Binarize` for Bernoulli,
    :class:`Standardize` (fit on ``raw_train`` ``[N, *event_shape]``) for Normal, :class:`Dequantize` (noise from
    ``seed``) for Exponential, Gamma, LogNormal and Beta."""
    checks.choice("leaf", leaf, IMAGE_LEAVES)
    if leaf in _COUNT_LEAVES:
        return Counts(max_value)
    if leaf in _DEQUANTIZED_LEAVES:
        return Dequantize(max_value, seed)
    if leaf == "bernoulli":
        return Binarize(max_value)
    return Standardize.fit(raw_train, max_value)
