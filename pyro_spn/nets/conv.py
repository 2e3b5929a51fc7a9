"""DCGAN-style convolutional nets for images ``(C, H, W)``: a feature encoder and a discriminator."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .. import checks

_STRIDED_OUTPUT = 4  # strided convolutions halve the image until its smaller side is at most this


class ConvEncoder(nn.Module):
    """``[N, C, H, W]`` → ``[N, out_features]``, sized from the image shape.

    DCGAN's discriminator body: 4×4 convolutions of stride 2 (each halves ``H`` and ``W``), LeakyReLU(0.2)
    after each, channels doubling from ``base_channels`` up to ``max_channels``, until the smaller side
    is at most 4 (8×8 → 4×4; 28×28 → 3×3; 32×32 → 4×4; 64×64 → 4×4); a final convolution whose kernel
    covers the whole remaining map gives the output. Spectral normalization stands in for DCGAN's
    BatchNorm: it needs no batch statistics (real and fake batches are scored alike, in train and eval
    mode) and bounds the net's Lipschitz constant, which stabilizes adversarial training and the
    maximized MMD kernel (as weight clipping does in MMD-GAN). Inputs are normalized data: the
    objectives divide model-space data by their ``scale`` first.

    Args:
        event_shape: ``(C, H, W)`` with ``H, W >= 2``.
        out_features: the size of the output.
        base_channels: the channels of the first convolution.
        max_channels: the most channels of any convolution.
        spectral_norm: spectrally normalize every convolution.
    """

    def __init__(self, event_shape: Sequence[int], out_features: int, base_channels: int = 64,
                 max_channels: int = 512, spectral_norm: bool = True) -> None:
        super().__init__()
        shape = checks.event_shape(event_shape, max_dims=None)
        if len(shape) != 3 or min(shape[1:]) < 2:
            raise ValueError(f"event_shape must be an image shape (C, H, W) with H, W >= 2, got {event_shape!r}")
        self.event_shape = shape
        self.out_features = checks.integer("out_features", out_features)
        checks.integer("base_channels", base_channels)
        checks.integer("max_channels", max_channels)
        if not isinstance(spectral_norm, bool):
            raise TypeError(f"spectral_norm must be True or False, got {spectral_norm!r}")
        wrap = _spectral_norm if spectral_norm else (lambda module: module)
        channels, height, width = shape
        width_out = min(base_channels, max_channels)
        layers: list[nn.Module] = []
        while True:
            layers += [wrap(nn.Conv2d(channels, width_out, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels, height, width = width_out, height // 2, width // 2
            width_out = min(2 * width_out, max_channels)
            if min(height, width) <= _STRIDED_OUTPUT:
                break
        layers.append(wrap(nn.Conv2d(channels, self.out_features, (height, width))))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, C, H, W]`` → ``[N, out_features]``."""
        if x.dim() != 4 or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x: expected shape [N, {', '.join(map(str, self.event_shape))}], got {tuple(x.shape)}")
        return self.net(x).flatten(1)


class DCGANDiscriminator(ConvEncoder):
    """A DCGAN-style discriminator: ``[N, C, H, W]`` → logits ``[N]`` (see :class:`ConvEncoder`)."""

    def __init__(self, event_shape: Sequence[int], base_channels: int = 64, max_channels: int = 512,
                 spectral_norm: bool = True) -> None:
        super().__init__(event_shape, 1, base_channels, max_channels, spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[:, 0]
