"""Tensorized inner layers of a RAT-SPN: the einsum (sum-of-products) layer and the repetition mixing.

Shapes: ``N`` batch, ``R`` repetitions, ``L`` regions (per repetition), ``K`` units per region.
All values are log-likelihoods (log-space everywhere).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .log_einsum import exp_floor, log_einsum, stable_max


def split_children(x: Tensor) -> tuple[Tensor, Tensor]:
    """Splits ``[N, R, 2L, K]`` child regions into the left ``[N, R, L, K]`` and right ``[N, R, L, K]``
    children (siblings are adjacent: regions ``2l`` and ``2l + 1``)."""
    return x[:, :, 0::2], x[:, :, 1::2]


def pair_log_likelihood(x: Tensor) -> Tensor:
    """Log-likelihoods of all product units ``(i, j)``: ``left_i + right_j``.

    Args:
        x: child log-likelihoods ``[N, R, 2L, K]``.

    Returns:
        ``[N, R, L, K * K]``, pair ``(i, j)`` at index ``i * K + j``.
    """
    left, right = split_children(x)
    return (left[..., :, None] + right[..., None, :]).flatten(-2)


class EinsumLayer(nn.Module):
    """One layer of sums over products of pairs of sibling regions.

    Output unit ``k`` of region ``l`` in repetition ``r`` computes
    ``log Σ_ij w[l, k, r, i, j] · exp(left_i + right_j)`` over its two child regions, as one batched
    matrix product with the max-shift (log-einsum-exp) trick.

    Args:
        num_regions: ``L``, output regions per repetition (the input has ``2L``).
        num_inputs: ``K_in``, units per child region.
        num_outputs: ``K_out``, sum units per output region.
        num_repetitions: ``R``.
        generator: seeds the weight initialization.

    Parameters:
        logits: ``[R, L, K_out, K_in, K_in]``, normalized over ``K_in × K_in`` (softmax).
    """

    def __init__(self, num_regions: int, num_inputs: int, num_outputs: int, num_repetitions: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.num_inputs = num_inputs
        self.num_outputs = num_outputs
        self.num_repetitions = num_repetitions
        # drawn in the former [L, K_out, R, K_in, K_in] order, so that a seed still gives the same circuit
        shape = (num_regions, num_outputs, num_repetitions, num_inputs, num_inputs)
        logits = 0.5 * torch.randn(shape, generator=generator)
        self.logits = nn.Parameter(logits.permute(2, 0, 1, 3, 4).contiguous())

    def log_weights(self) -> Tensor:
        """Normalized log-weights, ``[R, L, K_out, K_in * K_in]``."""
        return self.logits.flatten(-2).log_softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        """Sum-product pass.

        Each child region is shifted by its maximum and children more than ``|floor|`` nats below it are raised
        to the floor before exp (see :func:`~pyro_spn.log_einsum.exp_floor`).

        On the CPU the layer runs in a batch-innermost ``[R, L, K, N]`` layout through
        :func:`~pyro_spn.log_einsum.log_einsum` (the native kernel of :mod:`pyro_spn.native` where it builds, or
        chunked, cache-sized products of pairs; a manual backward), and
        its output is a ``[N, R, L, K_out]`` view of a contiguous ``[R, L, K_out, N]`` tensor, so that a chain of
        these layers transposes once, at the bottom. On GPUs it is a broadcast outer product and one batched
        matmul in a ``[R, L, N, K_in * K_in]`` layout. Both compute the same values up to summation order.

        Args:
            x: child log-likelihoods ``[N, R, 2L, K_in]``.

        Returns:
            ``[N, R, L, K_out]``.
        """
        if x.device.type == "cpu":
            xt = x.permute(1, 2, 3, 0).contiguous()  # [R, 2L, K_in, N]; a no-op for this layer's own output
            return log_einsum(xt, self.logits.flatten(-2)).permute(3, 0, 1, 2)
        return self._forward_broadcast(x)

    def _forward_broadcast(self, x: Tensor) -> Tensor:
        """:meth:`forward` on GPUs: ``[N, R, 2L, K_in]`` → ``[N, R, L, K_out]`` with autograd's backward."""
        left, right = split_children(x)
        left_max, right_max = stable_max(left), stable_max(right)
        floor = exp_floor(x.dtype)
        # pairs in [R, L, N, K_in * K_in] layout, so that the batched matmul over (R, L) needs no copy
        left_scaled = (left - left_max).clamp_min(floor).exp().permute(1, 2, 0, 3)
        right_scaled = (right - right_max).clamp_min(floor).exp().permute(1, 2, 0, 3)
        pairs = (left_scaled[..., :, None] * right_scaled[..., None, :]).flatten(-2)
        weights = self.logits.flatten(-2).softmax(-1).transpose(-1, -2)  # [R, L, K_in * K_in, K_out]
        mixed = torch.matmul(pairs, weights).permute(2, 0, 1, 3)  # [N, R, L, K_out]
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log() + left_max + right_max

    def forward_max(self, x: Tensor) -> Tensor:
        """Max-product pass: ``max_ij log w[k, i, j] + left_i + right_j``.

        Args:
            x: child max-log-likelihoods ``[N, R, 2L, K_in]``.

        Returns:
            ``[N, R, L, K_out]``.
        """
        scores = self.log_weights() + pair_log_likelihood(x)[:, :, :, None, :]
        return scores.amax(-1)

    def extra_repr(self) -> str:
        return (f"regions={self.num_regions}, inputs={self.num_inputs}, outputs={self.num_outputs}, "
                f"repetitions={self.num_repetitions}")


class RepetitionMixing(nn.Module):
    """The root: a sum over the ``R`` repetitions (each a full circuit over all variables).

    Parameters:
        logits: ``[R]``, normalized by softmax.
    """

    def __init__(self, num_repetitions: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_repetitions))

    def log_weights(self) -> Tensor:
        """Normalized log-weights ``[R]``."""
        return self.logits.log_softmax(-1)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, R]`` repetition log-likelihoods → ``[N]`` root log-likelihood."""
        return torch.logsumexp(x + self.log_weights(), dim=-1)

    def forward_max(self, x: Tensor) -> Tensor:
        """``[N, R]`` → ``[N]`` max over repetitions."""
        return (x + self.log_weights()).amax(-1)
