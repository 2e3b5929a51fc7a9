"""Tensorized inner layers of a RAT-SPN: the einsum (sum-of-products) layer and the repetition mixing.

Shapes: ``N`` batch, ``R`` repetitions, ``L`` regions (per repetition), ``K`` units per region.
All values are log-likelihoods (log-space everywhere).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

#: Shifted child log-likelihoods are floored at this fraction of log(smallest normal float) before exp:
#: -30.6 nats in float32, -248 in float64.
_EXP_FLOOR_FRACTION = 0.35


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


def _stable_max(x: Tensor) -> Tensor:
    """``max`` over the last dim (kept), with non-finite maxima replaced by 0 (no gradient)."""
    m = x.detach().amax(-1, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def _outer(left: Tensor, right: Tensor) -> Tensor:
    """Outer products of the last dims: ``[..., K] x [..., K]`` → ``[..., K * K]``, pair ``(i, j)`` at ``i * K + j``.

    On the CPU a ``bmm`` with inner dimension 1, whose backward is two ``bmm``s instead of reductions over a
    broadcast product (2x faster there); on GPUs that ``bmm`` runs as slow matrix-vector kernels, so it is a
    broadcast multiply there. Both compute the same single products.
    """
    num_inputs = left.shape[-1]
    if left.device.type == "cpu":
        pairs = torch.bmm(left.reshape(-1, num_inputs, 1), right.reshape(-1, 1, num_inputs))
    else:
        pairs = left[..., :, None] * right[..., None, :]
    return pairs.reshape(left.shape[:-1] + (num_inputs * num_inputs,))


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
        logits: ``[L, K_out, R, K_in, K_in]``, normalized over ``K_in × K_in`` (softmax).
    """

    def __init__(self, num_regions: int, num_inputs: int, num_outputs: int, num_repetitions: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.num_inputs = num_inputs
        self.num_outputs = num_outputs
        self.num_repetitions = num_repetitions
        shape = (num_regions, num_outputs, num_repetitions, num_inputs, num_inputs)
        self.logits = nn.Parameter(0.5 * torch.randn(shape, generator=generator))

    def log_weights(self) -> Tensor:
        """Normalized log-weights, ``[R, L, K_out, K_in * K_in]``."""
        return self.logits.flatten(-2).log_softmax(-1).permute(2, 0, 1, 3)

    def forward(self, x: Tensor) -> Tensor:
        """Sum-product pass.

        Args:
            x: child log-likelihoods ``[N, R, 2L, K_in]``.

        Returns:
            ``[N, R, L, K_out]``.
        """
        if x.device.type == "cpu" and not (torch.is_grad_enabled() and (x.requires_grad or self.logits.requires_grad)):
            return self._forward_transposed(x)
        left, right = split_children(x)
        left_max, right_max = _stable_max(left), _stable_max(right)
        # Children more than |floor| nats below their region's best are raised to the floor before exp, so
        # that products of pairs and weights stay normal floats: subnormal arithmetic is ~10x slower on CPUs,
        # and those children's true share of the sum (< e^floor of the best pair's) is below the precision.
        floor = _EXP_FLOOR_FRACTION * math.log(torch.finfo(x.dtype).tiny)
        # pairs in [R, L, N, K_in * K_in] layout, so that the batched matmul over (R, L) needs no copy
        left_scaled = (left - left_max).clamp_min(floor).exp().permute(1, 2, 0, 3)
        right_scaled = (right - right_max).clamp_min(floor).exp().permute(1, 2, 0, 3)
        pairs = _outer(left_scaled, right_scaled)
        weights = self.logits.flatten(-2).softmax(-1).permute(2, 0, 3, 1)  # [R, L, K_in * K_in, K_out]
        mixed = torch.matmul(pairs, weights).permute(2, 0, 1, 3)  # [N, R, L, K_out]
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log() + left_max + right_max

    def _forward_transposed(self, x: Tensor) -> Tensor:
        """:meth:`forward` without autograd on the CPU, in a ``[R, L, K, N]`` layout (batch innermost).

        The same operations on the same values (results agree up to the matmul's summation order), but the outer
        products are a broadcast multiply along contiguous rows of ``N`` and the matmul is
        ``[K_out, K_in^2] @ [K_in^2, N]``: 1.6x faster than the ``[N, K_in^2] @ [K_in^2, K_out]`` layout there
        (whose backward is faster, so it stays the autograd path). The output is a ``[N, R, L, K_out]`` view of a
        contiguous ``[R, L, K_out, N]`` tensor, so a chain of these layers transposes once, at the bottom.
        """
        xt = x.permute(1, 2, 3, 0).contiguous()  # [R, 2L, K_in, N]; a no-op for this method's own output
        left, right = xt[:, 0::2], xt[:, 1::2]
        left_max, right_max = _stable_max(left.transpose(-1, -2)), _stable_max(right.transpose(-1, -2))
        left_max, right_max = left_max.transpose(-1, -2), right_max.transpose(-1, -2)  # [R, L, 1, N]
        floor = _EXP_FLOOR_FRACTION * math.log(torch.finfo(x.dtype).tiny)
        left_scaled = (left - left_max).clamp_min_(floor).exp_()
        right_scaled = (right - right_max).clamp_min_(floor).exp_()
        repetitions, regions, num_inputs, num_samples = left_scaled.shape
        pairs = left_scaled[:, :, :, None, :] * right_scaled[:, :, None, :, :]  # [R, L, K_in, K_in, N]
        pairs = pairs.view(repetitions, regions, num_inputs * num_inputs, num_samples)
        weights = self.logits.flatten(-2).softmax(-1).permute(2, 0, 1, 3)  # [R, L, K_out, K_in * K_in]
        mixed = torch.matmul(weights, pairs)  # [R, L, K_out, N]
        out = mixed.clamp_min_(torch.finfo(mixed.dtype).tiny).log_().add_(left_max + right_max)
        return out.permute(3, 0, 1, 2)

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
