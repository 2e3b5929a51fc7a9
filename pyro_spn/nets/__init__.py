"""Neural parts of the sample-based objectives: discriminators (ADV) and kernel encoders (MMD).

Every net maps normalized data ``[N, *event_shape]`` (the objectives divide model-space data, e.g.
Binomial counts ``0..255``, by their ``scale`` first) to logits ``[N]`` (discriminators) or features
``[N, out_features]`` (encoders). Images (``event_shape == (C, H, W)``) get DCGAN-style convolutional
nets, everything else fully connected ones over the flattened data.

The baselines (:class:`VAE`, :class:`Generator` for GANs and MMD-GANs) are generative nets with a
circuit's sampling interface, so the same objectives and trainer train them (module
:mod:`pyro_spn.nets.baselines`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn

from .. import checks
from .baselines import VAE, Generator
from .conv import ConvEncoder, DCGANDiscriminator
from .mlp import MLPDiscriminator, MLPEncoder

__all__ = ["VAE", "ConvEncoder", "DCGANDiscriminator", "Generator", "MLPDiscriminator", "MLPEncoder",
           "make_discriminator", "make_encoder"]


def make_discriminator(event_shape: int | Sequence[int], spectral_norm: bool = True) -> nn.Module:
    """A discriminator for data of ``event_shape``: :class:`DCGANDiscriminator` for ``(C, H, W)``,
    :class:`MLPDiscriminator` over the flattened data otherwise; ``[N, *event_shape]`` → ``[N]``."""
    shape = checks.event_shape(event_shape, max_dims=None)
    if len(shape) == 3:
        return DCGANDiscriminator(shape, spectral_norm=spectral_norm)
    return MLPDiscriminator(math.prod(shape), spectral_norm=spectral_norm)


def make_encoder(event_shape: int | Sequence[int], out_features: int, spectral_norm: bool = True) -> nn.Module:
    """An MMD kernel encoder for data of ``event_shape``: :class:`ConvEncoder` for ``(C, H, W)``,
    :class:`MLPEncoder` over the flattened data otherwise; ``[N, *event_shape]`` → ``[N, out_features]``."""
    shape = checks.event_shape(event_shape, max_dims=None)
    if len(shape) == 3:
        return ConvEncoder(shape, out_features, spectral_norm=spectral_norm)
    return MLPEncoder(math.prod(shape), out_features, spectral_norm=spectral_norm)
