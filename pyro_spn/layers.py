"""Tensorized layers of a RAT-SPN: the leaf layer (the leaf regions' parameters), the einsum (sum-of-products)
layer and the repetition mixing at the root.

Shapes: ``N`` batch, ``C`` channels, ``F`` variables, ``R`` repetitions, ``L`` regions (per repetition),
``M`` variables per leaf region (padded), ``I`` leaf components per leaf region, ``K`` sum units per region.
All values are log-likelihoods (log-space everywhere).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .leaves.base import Leaf, Params, straight_through
from .log_einsum import exp_floor, inexact_entries, log_einsum, log_sum_exp, pairs_log_sum_exp, stable_max
from .structure import RandomBinaryTrees

#: Leaf terms that may cancel are summed in float64; a leaf region's value whose terms could still have lost more than
#: this many units of the circuit's precision (:meth:`pyro_spn.leaves.Leaf.cancellation`) is recomputed.
CANCELLATION_TOLERANCE = 16.0


def _cast(params: Params, dtype: torch.dtype) -> Params:
    """The floating-point parameters in ``dtype`` (others, such as a Mixed leaf's group types, as they are)."""
    return {name: p.to(dtype) if p.is_floating_point() else p for name, p in params.items()}


class LeafLayer(nn.Module):
    """The leaf regions of a circuit: ``I`` components of the leaf family ``leaf`` for every channel, variable and
    repetition, and the gathering of variables into leaf regions.

    The parameters are the spec's unconstrained parameters (:meth:`pyro_spn.leaves.Leaf.init_parameters`), each
    ``[C, F, I, R, *E]``, registered under the spec's names (e.g. ``loc`` and ``raw_scale`` for Normal leaves).
    Leaf region ``l`` of repetition ``r`` holds the variables ``leaf_slots[r, l]`` (padding slots hold the index
    ``F``, a variable that is always marginalized).

    Args:
        leaf: the leaf family.
        num_channels: ``C``.
        trees: the region graph (its leaf regions).
        num_components: ``I``.
        generator: seeds the parameter initialization.

    Buffers:
        leaf_slots: ``[R, L, M]`` the variable at every slot of every leaf region (``F`` for padding).
        variable_region: ``[R, F]`` the leaf region of every variable.
    """

    leaf_slots: Tensor
    variable_region: Tensor

    def __init__(self, leaf: Leaf, num_channels: int, trees: RandomBinaryTrees, num_components: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.leaf = leaf
        self.num_channels = num_channels
        self.num_features = trees.num_features
        self.num_components = num_components
        self.num_repetitions = trees.num_repetitions
        self.register_buffer("leaf_slots", trees.leaf_slots)
        self.register_buffer("variable_region", trees.variable_region)
        shape = torch.Size((num_channels, trees.num_features, num_components, trees.num_repetitions))
        for name, value in leaf.init_parameters(shape, generator).items():
            self.register_parameter(name, nn.Parameter(value))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(C, F, I, R)``."""
        return self.num_channels, self.num_features, self.num_components, self.num_repetitions

    def params(self) -> Params:
        """The constrained parameters of every component, each ``[C, F, I, R, *E]``."""
        return self.leaf.constrain(dict(self.named_parameters()))

    # -- gathering into leaf regions --------------------------------------------------------------------
    def data_slots(self, t: Tensor) -> Tensor:
        """Gathers per-variable values ``[N, C, F, *E]`` into leaf-region slots ``[R, L, M, C, *E, N]``, batch
        last (padding slots read a zero), as one row-wise ``index_select``."""
        moved = t.movedim(2, 0).movedim(1, -1)  # [F, C, *E, N]
        padded = torch.cat([moved, moved.new_zeros((1,) + moved.shape[1:])])
        slots = padded.index_select(0, self.leaf_slots.flatten())
        return slots.view(self.leaf_slots.shape + slots.shape[1:])

    def component_slots(self, t: Tensor) -> Tensor:
        """Gathers per-component values ``[C, F, I, R, *E]`` into slots ``[R, L, M, C, I, *E]``, as one row-wise
        ``index_select`` (whose backward is a row-wise ``index_add``)."""
        moved = t.movedim(3, 0).movedim(2, 1)  # [R, F, C, I, *E]
        padded = torch.cat([moved, moved.new_zeros(moved.shape[:1] + (1,) + moved.shape[2:])], dim=1)
        offsets = torch.arange(self.num_repetitions, device=t.device)[:, None, None] * padded.shape[1]
        slots = padded.flatten(0, 1).index_select(0, (offsets + self.leaf_slots).flatten())
        return slots.view(self.leaf_slots.shape + slots.shape[1:])

    @staticmethod
    def contract_slots(data: Tensor, component: Tensor) -> Tensor:
        """``Σ_{m, c, e} data[r, l, m, c, e, n] · component[r, l, m, c, i, e]`` as one batched matmul.

        Args:
            data: ``[R, L, M, C, *E, N]`` (:meth:`data_slots`).
            component: ``[R, L, M, C, I, *E]`` (:meth:`component_slots`).

        Returns:
            ``[R, L, I, N]``.
        """
        repetitions, regions, num_samples = data.shape[0], data.shape[1], data.shape[-1]
        num_components = component.shape[4]
        contracted = math.prod(data.shape[2:-1])  # M * C * E (explicit: with N = 0, -1 would be ambiguous)
        lhs = component.movedim(4, 2).reshape(repetitions * regions, num_components, contracted)  # [R*L, I, M*C*E]
        rhs = data.reshape(repetitions * regions, contracted, num_samples)  # [R*L, M*C*E, N]
        return torch.matmul(lhs, rhs).view(repetitions, regions, num_components, num_samples)

    def variable_selection(self, leaf_selection: Tensor) -> Tensor:
        """``[N, R, L, I]`` leaf-region selections → ``[N, F, I, R]`` per-variable selections."""
        repetition = torch.arange(self.num_repetitions, device=leaf_selection.device)[:, None]
        return leaf_selection[:, repetition, self.variable_region].permute(0, 2, 3, 1)

    # -- the leaf regions' log-likelihoods --------------------------------------------------------------
    def log_likelihood(self, x: Tensor, max_product: bool = False) -> tuple[Tensor, Tensor]:
        """Log-likelihoods of all leaf regions, as one batched matmul of sufficient statistics with natural
        parameters (``log p = T(x)·η − A(η) + h(x)``).

        Where those terms can cancel (:meth:`pyro_spn.leaves.Leaf.cancellation`, e.g. Normal leaves far from the
        origin relative to their scale), the values whose terms could have cancelled beyond
        ``CANCELLATION_TOLERANCE`` units of ``x``'s precision are summed again in float64, and those still
        concerned recomputed by the leaf's closed form (:meth:`_recompute_cancelled`): every value is exact
        whatever the parameters. An infinite entry makes its leaf regions impossible (``-inf``): it is outside
        every leaf's support, or of density zero.

        Args:
            x: ``[N, C, F]`` with NaN for missing entries.
            max_product: missing entries contribute the log-density of each component's mode (max-product) instead of 0
                (marginalization).

        Returns:
            ``([N, R, L, I], [N])``: the leaf regions' log-likelihoods without the base measure (a view of a
            contiguous ``[R, L, I, N]`` tensor, the einsum layers' CPU layout), and the base measure ``Σ h(x)`` over
            the observed entries (the same for every component, so it is added once, at the root).
        """
        leaf = self.leaf
        params = self.params()
        given = x
        skipped = ~torch.isfinite(x)  # missing (NaN) or infinite
        any_skipped = bool(skipped.any())
        observed = (~skipped).to(x.dtype)
        x = torch.where(skipped, torch.zeros_like(x), x)
        base_measure = leaf.log_base_measure(x)
        ll = self._contract(x, observed, params, any_skipped)
        kappa = leaf.cancellation(params)
        if kappa is not None:
            ll = self._recompute_cancelled(ll, x, observed, base_measure, params, kappa, any_skipped)
        if any_skipped:
            ll = self._skipped(ll, given, params, max_product)
        base = (base_measure * observed).sum((1, 2))
        return ll.permute(3, 0, 1, 2), base

    def _skipped(self, ll: Tensor, x: Tensor, params: Params, max_product: bool) -> Tensor:
        """``ll`` ``[R, L, I, N]`` of the finite entries of ``x`` ``[N, C, F]``, with its missing (NaN) entries'
        modes added for max-product and ``-inf`` wherever a leaf region has an infinite entry."""
        missing, infinite = torch.isnan(x), torch.isinf(x)
        if max_product and bool(missing.any()):
            mode_log_prob = self.component_slots(self.leaf.log_prob(self.leaf.mode(params), params))
            ll = ll + self.contract_slots(self.data_slots(missing.to(x.dtype)), mode_log_prob)
        if bool(infinite.any()):
            impossible = self.data_slots(infinite.to(x.dtype)).sum((2, 3))[:, :, None] > 0  # [R, L, 1, N]
            ll = ll.masked_fill(impossible, -math.inf)
        return ll

    def _contract(self, x: Tensor, observed: Tensor, params: Params, any_skipped: bool) -> Tensor:
        """``Σ T(x)·η − A(η)`` over every leaf region's observed entries, ``[R, L, I, N]``, in ``x``'s dtype.

        Args:
            x: ``[N, C, F]`` (no NaN); observed: ``[N, C, F]``, 1 where an entry counts; params: the constrained
                parameters; any_skipped: whether ``observed`` has a 0.
        """
        leaf = self.leaf
        stats = leaf.sufficient_statistics(x) * observed[..., None]  # [N, C, F, S]
        eta = self.component_slots(leaf.natural_parameters(params))  # [R, L, M, C, I, S]
        ll = self.contract_slots(self.data_slots(stats), eta)  # [R, L, I, N]
        log_normalizer = self.component_slots(leaf.log_normalizer(params))  # [R, L, M, C, I]
        if any_skipped:
            return ll - self.contract_slots(self.data_slots(observed), log_normalizer)
        return ll - log_normalizer.sum((2, 3))[..., None]

    def _recompute_cancelled(self, ll: Tensor, x: Tensor, observed: Tensor, base_measure: Tensor, params: Params,
                             kappa: Tensor, any_skipped: bool) -> Tensor:
        """``ll`` ``[R, L, I, N]`` (:meth:`_contract` of ``x``) with the values whose terms could have cancelled
        (:meth:`_cancelled`) summed again in float64 (the whole contraction, if there are any and ``x`` is
        narrower), and those still concerned then recomputed by :meth:`_region_log_prob`.

        Args:
            x, observed, base_measure: ``[N, C, F]``; params: the constrained parameters; kappa: ``[C, F, I, R]``,
                the leaf's :meth:`~pyro_spn.leaves.Leaf.cancellation`; any_skipped: whether ``observed`` has a 0.
        """
        bound = self._cancellation_bound(kappa, observed, any_skipped)
        entries = self._cancelled(ll, bound, x.dtype)
        if entries is not None and x.dtype != torch.float64:
            ll = self._contract(x.double(), observed.double(), _cast(params, torch.float64), any_skipped)
            entries = self._cancelled(ll, bound, x.dtype)
        if entries is not None:
            exact = self._region_log_prob(x, observed, base_measure, params, entries)
            ll = ll.index_put(tuple(entries.T), exact.to(ll.dtype))
        return ll.to(x.dtype)

    def _cancellation_bound(self, kappa: Tensor, observed: Tensor, any_skipped: bool) -> Tensor:
        """``Σ κ`` over every leaf region's observed entries: ``[R, L, I, N]``, or ``[R, L, I, 1]`` when every entry
        is observed (no data involved then); ``kappa`` ``[C, F, I, R]``."""
        kappa_slots = self.component_slots(kappa)  # [R, L, M, C, I]
        if any_skipped:
            return self.contract_slots(self.data_slots(observed.to(kappa.dtype)), kappa_slots)
        return kappa_slots.sum((2, 3))[..., None]

    @staticmethod
    def _cancelled(ll: Tensor, bound: Tensor, dtype: torch.dtype) -> Tensor | None:
        """The values of ``ll`` ``[R, L, I, N]``, summed in its dtype, whose cancellation bound ``ε_ll · bound``
        (``bound``: ``Σ κ`` over each value's terms) exceeds ``CANCELLATION_TOLERANCE · ε · (|ll| + 1)``, ``ε`` the
        precision of ``dtype``: their indices ``[B, 4]`` ``(repetition, region, component, sample)``, or None."""
        accepted = CANCELLATION_TOLERANCE * torch.finfo(dtype).eps / torch.finfo(ll.dtype).eps
        magnitude = ll.detach().abs()
        if bound.shape[-1] == 1 and magnitude.shape[-1] > 0:  # first against each component's smallest |value|
            if not bool((bound > accepted * (magnitude.amin(-1, keepdim=True) + 1)).any()):
                return None
        cancelled = bound > accepted * (magnitude + 1)
        return cancelled.nonzero() if bool(cancelled.any()) else None

    def _region_log_prob(self, x: Tensor, observed: Tensor, base_measure: Tensor, params: Params,
                         entries: Tensor) -> Tensor:
        """``Σ (log p − h)`` over the observed entries of leaf regions by the leaf's closed form, one variable at a
        time: ``[B]`` for ``entries`` ``[B, 4]`` ``(repetition, region, component, sample)``; ``x``,
        ``observed`` and ``base_measure`` (``h(x)``) ``[N, C, F]``."""
        repetition, region, component, sample = (index[:, None] for index in entries.unbind(1))
        feature = self.leaf_slots[repetition[:, 0], region[:, 0]]  # [B, M], padding slots F
        padding = feature == self.num_features
        feature = feature.masked_fill(padding, 0)  # a valid variable, not counted
        counted = observed[sample, :, feature] * ~padding[..., None]  # [B, M, C]
        own = {name: p[:, feature, component, repetition].movedim(0, 2) for name, p in params.items()}
        log_prob = self.leaf.log_prob(x[sample, :, feature], own) - base_measure[sample, :, feature]
        return (log_prob * counted).sum((1, 2))

    # -- every component on its own -----------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """Log-likelihood of every component.

        Args:
            x: ``[N, C, F]``; NaN entries are marginalized (contribute 0).

        Returns:
            ``[N, C, F, I, R]``.
        """
        missing = torch.isnan(x)
        x = torch.where(missing, torch.zeros_like(x), x)[..., None, None]
        params = {k: v.unsqueeze(0) for k, v in self.params().items()}
        log_prob = self.leaf.log_prob(x, params)
        return torch.where(missing[..., None, None], torch.zeros_like(log_prob), log_prob)

    def expanded_params(self, sample_shape: Sequence[int] = ()) -> Params:
        """:meth:`params`, each expanded to ``[*sample_shape, C, F, I, R, *E]``."""
        shape = torch.Size(sample_shape)
        return {name: p.expand(shape + p.shape) for name, p in self.params().items()}

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        """Exact draws from every component, shape ``[*sample_shape, C, F, I, R]``."""
        with torch.no_grad():
            return self.leaf.sample(self.expanded_params(sample_shape))

    def rsample(self, sample_shape: Sequence[int] = (), temperature: Tensor | float = 1.0,
                hard: bool = True) -> Tensor:
        """Differentiable draws from every component, shape ``[*sample_shape, C, F, I, R]``.

        With ``hard=True`` (straight-through) the values are exact draws and the gradient is the relaxation's;
        with ``hard=False`` the values are the relaxed draws themselves.
        """
        params = self.expanded_params(sample_shape)
        if not hard:
            return self.leaf.relaxed(params, temperature)
        value = self.leaf.sample(params)
        return straight_through(value, self.leaf.relaxed(params, temperature, value))

    def mode(self) -> Tensor:
        """The mode of every component, ``[C, F, I, R]``."""
        return self.leaf.mode(self.params())

    def mean(self) -> Tensor:
        """The mean of every component, ``[C, F, I, R]``."""
        return self.leaf.mean(self.params())

    def extra_repr(self) -> str:
        return f"{self.leaf!r}, C={self.num_channels}, F={self.num_features}, I={self.num_components}, " \
               f"R={self.num_repetitions}"


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
        to the floor before exp (see :func:`~pyro_spn.log_einsum.exp_floor`); the rare outputs whose mixture is
        too small for that to be exact (:func:`~pyro_spn.log_einsum.exact_threshold`) are recomputed as a direct
        log-sum-exp over their pairs, so the values are exact whatever their spread.

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
        out = mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log() + left_max + right_max
        entries = inexact_entries(mixed.detach())  # [B, 4]: (sample, repetition, region, unit), or None
        if entries is None:
            return out
        sample, repetition, region, unit = entries.unbind(1)
        exact = pairs_log_sum_exp(left[sample, repetition, region], right[sample, repetition, region],
                                  self.logits.flatten(-2)[repetition, region, unit])
        return out.index_put((sample, repetition, region, unit), exact)

    def forward_max(self, x: Tensor) -> Tensor:
        """Max-product pass: ``max_ij log w[k, i, j] + left_i + right_j``.

        Args:
            x: child max-log-likelihoods ``[N, R, 2L, K_in]``.

        Returns:
            ``[N, R, L, K_out]``.

        The scores ``[N, R, L, K_out, K_in²]`` are formed from a row-major copy of ``x`` (the leaf layer's output is a
        batch-innermost view), so that the max runs over contiguous pairs: the same values, many times faster.
        """
        scores = self.log_weights() + pair_log_likelihood(x.contiguous())[:, :, :, None, :]
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
        """``[N, R]`` repetition log-likelihoods → ``[N]`` root log-likelihood (``-inf`` for an impossible value,
        with a zero gradient)."""
        return log_sum_exp(x + self.log_weights())

    def forward_max(self, x: Tensor) -> Tensor:
        """``[N, R]`` → ``[N]`` max over repetitions."""
        return (x + self.log_weights()).amax(-1)
