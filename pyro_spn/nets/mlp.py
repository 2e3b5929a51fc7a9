"""Fully connected nets for vector data: a feature encoder and a discriminator."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .. import checks


class MLPEncoder(nn.Module):
    """``[N, *shape]`` (flattened to ``[N, in_features]``) → ``[N, out_features]``.

    Linear layers with LeakyReLU(0.2) between them. Inputs are normalized data: the objectives divide
    model-space data by their ``scale`` before calling a net.

    Args:
        in_features: the number of input entries per example (``prod(event_shape)``).
        out_features: the size of the output.
        hidden: the widths of the hidden layers (may be empty: a linear map).
        spectral_norm: spectrally normalize every linear layer (a 1-Lipschitz net: it keeps a
            discriminator or a maximized MMD kernel from growing without bound).
    """

    def __init__(self, in_features: int, out_features: int, hidden: Sequence[int] = (128, 128),
                 spectral_norm: bool = True) -> None:
        super().__init__()
        self.in_features = checks.integer("in_features", in_features)
        self.out_features = checks.integer("out_features", out_features)
        widths = [checks.integer("hidden", width) for width in hidden]
        if not isinstance(spectral_norm, bool):
            raise TypeError(f"spectral_norm must be True or False, got {spectral_norm!r}")
        wrap = _spectral_norm if spectral_norm else (lambda module: module)
        layers: list[nn.Module] = []
        sizes = [self.in_features, *widths]
        for width_in, width_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [wrap(nn.Linear(width_in, width_out)), nn.LeakyReLU(0.2)]
        layers.append(wrap(nn.Linear(sizes[-1], self.out_features)))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """``x [N, *shape]`` with ``prod(shape) == in_features`` → ``[N, out_features]``."""
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != self.in_features:
            raise ValueError(f"x: expected {self.in_features} entries per example, got shape {tuple(x.shape)}")
        return self.net(flat)


class MLPDiscriminator(MLPEncoder):
    """A discriminator for vector data: ``[N, *shape]`` → logits ``[N]`` (see :class:`MLPEncoder`)."""

    def __init__(self, in_features: int, hidden: Sequence[int] = (128, 128), spectral_norm: bool = True) -> None:
        super().__init__(in_features, 1, hidden, spectral_norm)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[:, 0]
