"""``RatSPN``: a tensorized random-binary-tree sum-product network (an ``nn.Module``).

Structure (``D`` depth, ``R`` repetitions, ``K`` = ``num_sums``, ``I`` = ``num_leaves``)::

    leaves [N, C, F] → leaf regions [N, R, 2^D, I]
      → einsum layers [N, R, 2^(D-1), K] → … → [N, R, 1, 1] → repetition mixing → root [N]

The circuit knows nothing of Pyro; :class:`pyro_spn.SPNDistribution` adapts it.

Data ``x`` has shape ``[N, *event_shape]``; ``event_shape`` is ``(F,)``, ``(H, W)`` (one channel) or
``(C, H, W)`` (``F = H·W`` variables with ``C`` channels each; a leaf factorizes over channels).
NaN entries of ``x`` are missing: they are marginalized (``log_likelihood``), sampled (``sample`` with
evidence) or maximized (``mpe``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import EinsumLayer, RepetitionMixing, pair_log_likelihood
from .leaves import Leaf, Params
from .sampling import ONE_HOT_RULES, Rule, conditional_gumbel, select
from .structure import random_binary_trees

Interpolation = Literal["unit", "region"]
INTERPOLATIONS: tuple[str, ...] = ("unit", "region")


@dataclass
class UpwardPass:
    """What an upward pass leaves behind for the top-down pass.

    Attributes:
        layer_inputs: the input of every einsum layer, bottom to top, each ``[N, R, 2L, K_in]``.
        repetition_log_likelihood: ``[N, R]``, the root's children.
        log_likelihood: ``[N]``, the root (sum pass) or the max-product value (max pass).
    """

    layer_inputs: list[Tensor]
    repetition_log_likelihood: Tensor
    log_likelihood: Tensor


def _normalize_event_shape(event_shape: int | Sequence[int]) -> tuple[int, ...]:
    message = (f"event_shape must be a positive int F or a shape (F,), (H, W) or (C, H, W) of positive ints, "
               f"got {event_shape!r}")
    try:
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    except TypeError:
        raise ValueError(message) from None
    if not 1 <= len(shape) <= 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape):
        raise ValueError(message)
    return shape


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _draw_unit_pairs(log_w: Tensor, num_samples: int) -> Tensor:
    """Every sum unit's child pair for each of ``num_samples`` samples, drawn from its weights by inverse CDF.

    Args:
        log_w: ``[R, L, K, Q]`` normalized log-weights.

    Returns:
        ``[N, R, L, K]`` pair indices in ``0..Q-1`` (no gradient).
    """
    num_repetitions, num_regions, num_units, num_pairs = log_w.shape
    with torch.no_grad():
        cdf = log_w.exp().cumsum(-1)  # [R, L, K, Q]
        u = torch.rand((num_repetitions, num_regions, num_units, num_samples), dtype=log_w.dtype, device=log_w.device)
        index = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).clamp_max(num_pairs - 1)
    return index.permute(3, 0, 1, 2)


def _scatter_pairs(s: Tensor, index: Tensor, num_inputs: int) -> tuple[Tensor, Tensor]:
    """The child selections of units' drawn pairs, weighted by the units' selections ``s``.

    Args:
        s: ``[N, R, L, K]`` unit selections.
        index: ``[N, R, L, K]`` each unit's pair ``i * num_inputs + j``.

    Returns:
        ``(left, right)``, each ``[N, R, L, num_inputs]``: ``Σ_k s_k`` over the units whose pair has left ``i``
        (right ``j``).
    """
    left = s.new_zeros(s.shape[:3] + (num_inputs,)).scatter_add(-1, index // num_inputs, s)
    right = s.new_zeros(s.shape[:3] + (num_inputs,)).scatter_add(-1, index % num_inputs, s)
    return left, right


class _ContractedSelectionGradient(torch.autograd.Function):
    """The straight-through gradient of ``Σ_{r,i} a[n, r, l(v), i] · x̃[n, c, v, i, r]`` w.r.t. the leaf
    selections ``a``, for leaves whose relaxed draws are ``x̃ = μ + σ ε``, without drawing them.

    The forward value is zero (the term only enters a sample as ``t - t.detach()``). The gradient of
    ``a[n, r, l, i]`` is ``Σ_{c, v ∈ (r, l)} g[n, c, v] · x̃[n, c, v, i, r]``: for the selected component
    ``x̃`` is the coupled relaxation of the exact draw; for every other component the sum of independent
    Gaussians is drawn at once as ``Σ g μ + sqrt(Σ g² σ²) · ξ``, the same law as drawing every ``x̃``,
    from ``[N, R, L, I]`` instead of ``[N, C, F, I, R]`` random numbers.
    """

    @staticmethod
    def forward(ctx, selection: Tensor, spn: RatSPN, mean_slots: Tensor, variance_slots: Tensor,
                coupled: Tensor) -> Tensor:
        ctx.spn = spn
        ctx.save_for_backward(selection.detach(), mean_slots, variance_slots, coupled)
        return coupled.new_zeros(coupled.shape)

    @staticmethod
    def backward(ctx, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        hard, mean_slots, variance_slots, coupled = ctx.saved_tensors
        g = ctx.spn._data_slots(grad_output)  # [R, L, M, C, N]
        mean = ctx.spn._contract_slots(g, mean_slots).permute(3, 0, 1, 2)  # [N, R, L, I]
        std = ctx.spn._contract_slots(g * g, variance_slots).clamp_min(0).sqrt().permute(3, 0, 1, 2)
        grad = mean + std * torch.randn_like(std)
        chosen = ctx.spn._data_slots(grad_output * coupled).sum((2, 3)).permute(2, 0, 1)  # [N, R, L]
        grad = torch.where(hard > 0.5, chosen[..., None], grad)
        return grad, None, None, None, None


class RatSPN(nn.Module):
    """A RAT-SPN over data of shape ``event_shape``.

    Args:
        event_shape: ``F``, ``(F,)``, ``(H, W)`` or ``(C, H, W)``.
        depth: ``D >= 1``; ``2**D`` leaf regions per repetition.
        num_repetitions: ``R >= 1`` random trees, mixed at the root.
        num_sums: ``K``, sum units per inner region.
        num_leaves: ``I``, leaf components per leaf region.
        leaf: a fresh leaf layer, e.g. ``Binomial(total_count=255)``; its parameters are created here.
        seed: seeds the region graph and the parameter initialization.
    """

    def __init__(self, event_shape: int | Sequence[int], *, depth: int, num_repetitions: int, num_sums: int,
                 num_leaves: int, leaf: Leaf, seed: int = 0) -> None:
        super().__init__()
        self.event_shape = _normalize_event_shape(event_shape)
        if not isinstance(leaf, Leaf):
            raise TypeError(
                f"leaf must be a pyro_spn.leaves leaf (Normal, Binomial, Bernoulli, Categorical), got {leaf!r}"
            )
        self.depth = _positive_int("depth", depth)
        self.num_repetitions = _positive_int("num_repetitions", num_repetitions)
        self.num_sums = _positive_int("num_sums", num_sums)
        self.num_leaves = _positive_int("num_leaves", num_leaves)
        self.num_channels = self.event_shape[0] if len(self.event_shape) == 3 else 1
        self.num_features = math.prod(self.event_shape) // self.num_channels

        trees = random_binary_trees(self.num_features, depth, num_repetitions, seed)
        self.register_buffer("leaf_slots", trees.leaf_slots)  # [R, L, M], padding index F
        self.register_buffer("variable_region", trees.variable_region)  # [R, F]

        generator = torch.Generator().manual_seed(seed)
        leaf.build(self.num_channels, self.num_features, num_leaves, num_repetitions, generator)
        self.leaf = leaf
        layers = []
        for level in range(depth):  # bottom to top
            num_regions = 2 ** (depth - 1 - level)
            num_inputs = num_leaves if level == 0 else num_sums
            num_outputs = 1 if level == depth - 1 else num_sums
            layers.append(EinsumLayer(num_regions, num_inputs, num_outputs, num_repetitions, generator))
        self.inner_layers = nn.ModuleList(layers)
        self.root = RepetitionMixing(num_repetitions)

    # -- shapes -------------------------------------------------------------------------------------------
    def flatten_data(self, x: Tensor) -> Tensor:
        """``[N, *event_shape]`` → ``[N, C, F]`` (cast to the parameters' dtype)."""
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x: expected shape [N, {', '.join(map(str, self.event_shape))}], got {tuple(x.shape)}")
        dtype = self.root.logits.dtype
        return x.to(dtype).reshape(x.shape[0], self.num_channels, self.num_features)

    def unflatten_data(self, x: Tensor) -> Tensor:
        """``[N, C, F]`` → ``[N, *event_shape]``."""
        return x.reshape((x.shape[0],) + self.event_shape)

    # -- upward pass ----------------------------------------------------------------------------------
    def _data_slots(self, t: Tensor) -> Tensor:
        """Gathers per-variable values ``[N, C, F, *E]`` into leaf-region slots ``[R, L, M, C, *E, N]``, batch
        last (padding slots read a zero), as one row-wise ``index_select``."""
        moved = t.movedim(2, 0).movedim(1, -1)  # [F, C, *E, N]
        padded = torch.cat([moved, moved.new_zeros((1,) + moved.shape[1:])])
        slots = padded.index_select(0, self.leaf_slots.flatten())
        return slots.view(self.leaf_slots.shape + slots.shape[1:])

    def _component_slots(self, t: Tensor) -> Tensor:
        """Gathers per-component values ``[C, F, K, R, *E]`` into slots ``[R, L, M, C, K, *E]``, as one row-wise
        ``index_select`` (whose backward is a row-wise ``index_add``)."""
        moved = t.movedim(3, 0).movedim(2, 1)  # [R, F, C, K, *E]
        padded = torch.cat([moved, moved.new_zeros(moved.shape[:1] + (1,) + moved.shape[2:])], dim=1)
        offsets = torch.arange(self.num_repetitions, device=t.device)[:, None, None] * padded.shape[1]
        slots = padded.flatten(0, 1).index_select(0, (offsets + self.leaf_slots).flatten())
        return slots.view(self.leaf_slots.shape + slots.shape[1:])

    @staticmethod
    def _contract_slots(data: Tensor, component: Tensor) -> Tensor:
        """``Σ_{m, c, e} data[r, l, m, c, e, n] · component[r, l, m, c, i, e]`` as one batched matmul.

        Args:
            data: ``[R, L, M, C, *E, N]`` (:meth:`_data_slots`).
            component: ``[R, L, M, C, I, *E]`` (:meth:`_component_slots`).

        Returns:
            ``[R, L, I, N]``.
        """
        repetitions, regions, num_samples = data.shape[0], data.shape[1], data.shape[-1]
        num_components = component.shape[4]
        lhs = component.movedim(4, 2).reshape(repetitions * regions, num_components, -1)  # [R*L, I, M*C*E]
        rhs = data.reshape(repetitions * regions, -1, num_samples)  # [R*L, M*C*E, N]
        return torch.matmul(lhs, rhs).view(repetitions, regions, num_components, num_samples)

    def leaf_log_likelihood(self, x: Tensor, max_product: bool = False) -> tuple[Tensor, Tensor]:
        """Log-likelihoods of all leaf regions, as one batched matmul of sufficient statistics with natural
        parameters (``log p = T(x)·η − A(η) + h(x)``).

        Args:
            x: ``[N, C, F]`` with NaN for missing entries.
            max_product: missing entries contribute the log-density of each component's mode (MPE)
                instead of 0 (marginalization).

        Returns:
            ``([N, R, L, I], [N])``: the leaf regions' log-likelihoods without the base measure (a view of a
            contiguous ``[R, L, I, N]`` tensor, the einsum layers' CPU layout), and the base measure ``Σ h(x)``
            over the observed entries (the same for every component, so it is added once, at the root).
        """
        missing = torch.isnan(x)
        observed = (~missing).to(x.dtype)
        x = torch.where(missing, torch.zeros_like(x), x)
        stats = self.leaf.sufficient_statistics(x) * observed[..., None]  # [N, C, F, S]
        eta = self._component_slots(self.leaf.natural_parameters())  # [R, L, M, C, I, S]
        log_normalizer = self._component_slots(self.leaf.log_normalizer())  # [R, L, M, C, I]
        ll = self._contract_slots(self._data_slots(stats), eta)  # [R, L, I, N]
        if bool(missing.any()):
            ll = ll - self._contract_slots(self._data_slots(observed), log_normalizer)
        else:
            ll = ll - log_normalizer.sum((2, 3))[..., None]
        if max_product and bool(missing.any()):
            params = self.leaf.params()
            mode_log_prob = self._component_slots(
                self.leaf.log_prob_params(self.leaf.mode_params(params), params)
            )
            ll = ll + self._contract_slots(self._data_slots(missing.to(x.dtype)), mode_log_prob)
        base = (self.leaf.log_base_measure(x) * observed).sum((1, 2))
        return ll.permute(3, 0, 1, 2), base

    def upward(self, x: Tensor, max_product: bool = False) -> UpwardPass:
        """The upward pass, keeping every layer's input for a top-down pass.

        Args:
            x: ``[N, *event_shape]``, NaN = missing.
            max_product: max-product (MPE) instead of sum-product.
        """
        ll, base = self.leaf_log_likelihood(self.flatten_data(x), max_product)
        inputs = []
        for layer in self.inner_layers:
            inputs.append(ll)
            ll = layer.forward_max(ll) if max_product else layer(ll)
        repetitions = ll[:, :, 0, 0]
        root = self.root.forward_max(repetitions) if max_product else self.root(repetitions)
        return UpwardPass(inputs, repetitions, root + base)

    def forward(self, x: Tensor) -> Tensor:
        """Exact log-likelihood ``[N]`` of ``x`` ``[N, *event_shape]``; NaN entries are marginalized."""
        return self.upward(x).log_likelihood

    # -- top-down pass --------------------------------------------------------------------------------
    def top_down(self, num_samples: int, rule: Rule, temperature: Tensor | float = 1.0,
                 interpolation: Interpolation = "unit", upward: UpwardPass | None = None) -> Tensor:
        """Selections from the root down to the leaf regions.

        At each inner region, every sum unit ``k`` selects a pair ``(i, j)`` of child units, ``y_k``; the
        region's pair selection is ``Σ_k s_k · y_k`` with ``s`` the selection arriving from above; the left
        child receives its marginal over ``i``, the right child over ``j``. With ``interpolation="region"``
        the region instead draws once from the logits of its units blended by ``s`` (the same sampler for
        one-hot rules, ``K`` times cheaper; a different relaxation for soft rules).

        Args:
            num_samples: ``N`` (must match ``upward``'s batch if given).
            rule: the selection rule, see :mod:`pyro_spn.sampling`.
            temperature: ``τ``.
            interpolation: ``"unit"`` (the paper's) or ``"region"``.
            upward: an upward pass with evidence; choices are then drawn from the posterior
                ``∝ w · child likelihoods`` at every sum, the repetition mixing included.

        Returns:
            ``[N, R, 2^D, I]``: the selection reaching every leaf component (one-hot over ``(r, i)`` for
            one-hot rules; summing to 1 over ``(r, i)`` per leaf region's variables).
        """
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        root_logits = self.root.log_weights().expand(num_samples, self.num_repetitions)
        if upward is not None:
            root_logits = root_logits + upward.repetition_log_likelihood
        s = select(root_logits, rule, temperature)[:, :, None, None]  # [N, R, 1, 1]
        for index in reversed(range(len(self.inner_layers))):
            layer = self.inner_layers[index]
            log_w = layer.log_weights()  # [R, L, K_out, Q]
            pair_ll = None if upward is None else pair_log_likelihood(upward.layer_inputs[index])  # [N, R, L, Q]
            if pair_ll is None and rule == "hard":  # exact: every unit draws its pair, the one-hot s picks the draws
                left, right = _scatter_pairs(s, _draw_unit_pairs(log_w, num_samples), layer.num_inputs)
            elif pair_ll is None and rule == "straight_through" and interpolation == "unit":
                left, right = self._straight_through_unit_children(s, log_w, temperature, layer.num_inputs)
            else:
                if interpolation == "unit" or rule == "expected":
                    logits = log_w.expand((num_samples,) + log_w.shape)
                    if pair_ll is not None:
                        logits = logits + pair_ll[:, :, :, None, :]
                    pairs = torch.einsum("nrlk,nrlkq->nrlq", s, select(logits, rule, temperature))
                else:
                    # blend the units' logits by the selection from above; where nothing arrives (an unselected
                    # repetition under one-hot rules) blend uniformly, so that its draws still follow the circuit
                    mass = s.sum(-1, keepdim=True)  # [N, R, L, 1]
                    blend = torch.where(mass > 0, s / mass.clamp_min(torch.finfo(s.dtype).tiny),
                                        torch.full_like(s, 1.0 / s.shape[-1]))
                    logits = torch.einsum("nrlk,rlkq->nrlq", blend, log_w)
                    if pair_ll is not None:
                        logits = logits + pair_ll
                    pairs = mass * select(logits, rule, temperature)
                pairs = pairs.unflatten(-1, (layer.num_inputs, layer.num_inputs))
                left, right = pairs.sum(-1), pairs.sum(-2)
            s = torch.stack([left, right], dim=3).flatten(2, 3)  # [N, R, 2L, K_in]
        return s

    @staticmethod
    def _straight_through_unit_children(s: Tensor, log_w: Tensor, temperature: Tensor | float,
                                        num_inputs: int) -> tuple[Tensor, Tensor]:
        """Child selections of ``Σ_k s_k · y_k`` for straight-through selections without evidence, without
        the ``K``-fold (and ``R``-fold) cost.

        With one-hot ``s`` (forward), a unit's soft ``y`` receives a gradient only where ``s`` is 1: the
        selected unit of the selected repetition. Every other unit contributes its hard draw alone (to the
        gradient of ``s``). So every unit draws its child pair by inverse CDF, the draws are scattered into
        the child selections with weights ``s``, and the soft selection of the selected units alone is built
        from Gumbel noise conditioned on their draws: the same estimator in law as per-unit Gumbel-Softmax
        straight-through, on ``[N, L, Q]`` and ``[N, R, L, K]`` tensors instead of ``[N, R, L, K, Q]``.

        Args:
            s: ``[N, R, L, K]`` straight-through one-hot selections of the units (one repetition nonzero).
            log_w: ``[R, L, K, Q]`` normalized log-weights, ``Q = num_inputs²``.

        Returns:
            ``(left, right)``, each ``[N, R, L, num_inputs]``.
        """
        num_samples, num_regions = s.shape[0], log_w.shape[1]
        samples = torch.arange(num_samples, device=s.device)
        with torch.no_grad():
            index = _draw_unit_pairs(log_w, num_samples)  # [N, R, L, K]
            repetition = s.detach().sum((2, 3)).argmax(1)  # [N], the selected repetition
            unit = s.detach()[samples, repetition].argmax(-1)  # [N, L], its selected units
            chosen = index[samples, repetition].gather(-1, unit[..., None])[..., 0]  # [N, L]
        left, right = _scatter_pairs(s, index, num_inputs)
        region = torch.arange(num_regions, device=s.device)[None, :]
        logits = log_w[repetition[:, None], region, unit]  # [N, L, Q]
        perturbed = conditional_gumbel(logits, chosen)
        soft = ((logits + (perturbed - logits).detach()) / temperature).softmax(-1)
        delta = (soft - soft.detach()).unflatten(-1, (num_inputs, num_inputs))  # zero forward
        left = left.index_put((samples, repetition), delta.sum(-1), accumulate=True)
        right = right.index_put((samples, repetition), delta.sum(-2), accumulate=True)
        return left, right

    def _variable_selection(self, leaf_selection: Tensor) -> Tensor:
        """``[N, R, L, I]`` leaf-region selections → ``[N, F, I, R]`` per-variable selections."""
        repetition = torch.arange(self.num_repetitions, device=leaf_selection.device)[:, None]
        return leaf_selection[:, repetition, self.variable_region].permute(0, 2, 3, 1)

    def _selected_index(self, leaf_selection: Tensor) -> Tensor:
        """For one-hot ``[N, R, L, I]`` leaf selections: the selected component of every variable as a
        flat index ``i * R + r`` into ``I·R``, shape ``[N, F]``."""
        selection = leaf_selection.detach()
        repetition = selection.sum((2, 3)).argmax(1)  # [N]
        samples = torch.arange(selection.shape[0], device=selection.device)
        unit = selection[samples, repetition].argmax(-1)  # [N, L]
        component = unit.gather(1, self.variable_region[repetition])  # [N, F]
        return component * self.num_repetitions + repetition[:, None]

    def _selected_params(self, index: Tensor) -> Params:
        """Parameters of the selected component of every variable; ``index [N, F]`` into ``I·R``."""
        features = torch.arange(self.num_features, device=index.device)[None, :]
        out = {}
        for name, p in self.leaf.params().items():
            flat = p.flatten(2, 3)  # [C, F, I·R, *E]
            out[name] = flat[:, features, index].movedim(0, 1)  # [N, C, F, *E]
        return out

    def leaf_values(self, leaf_selection: Tensor, rule: Rule, temperature: Tensor | float = 1.0) -> Tensor:
        """Values of all variables given the selections reaching the leaves.

        ``x_v = Σ_{r,i} a_{v,r,i} · x_{v,r,i}`` with ``x_{v,r,i}`` a draw of leaf component ``(r, i)``:
        exact (``"hard"``), relaxed (``"soft"``), exact forward with the relaxation's gradient
        (``"straight_through"``), the mode (``"argmax"``) or the mean (``"expected"``). One-hot rules
        draw one value per variable, from the selected component only.

        Args:
            leaf_selection: ``[N, R, L, I]`` from :meth:`top_down`.

        Returns:
            ``[N, C, F]``.
        """
        num_samples = leaf_selection.shape[0]
        if rule in ONE_HOT_RULES:
            index = self._selected_index(leaf_selection)  # [N, F]
            selected = self._selected_params(index)
            if rule == "argmax":
                return self.leaf.mode_params(selected)
            value = self.leaf.sample_params(selected)
            if rule == "hard":
                return value
            coupled = self.leaf.relaxed_params(selected, temperature, value)  # [N, C, F]
            moments = self.leaf.gaussian_relaxation()
            if moments is not None:
                mean, std = (self._component_slots(m.detach()) for m in moments)
                term = _ContractedSelectionGradient.apply(leaf_selection, self, mean, std * std, coupled.detach())
                soft = term + (coupled - coupled.detach())
                return value + (soft - soft.detach())
            a = self._variable_selection(leaf_selection)  # [N, F, I, R]
            all_params = {k: p.expand((num_samples,) + p.shape) for k, p in self.leaf.params().items()}
            # Other components enter the gradient only through their values (their selection is 0 forward),
            # so they are drawn without autograd history.
            with torch.no_grad():
                relaxed = self.leaf.relaxed_params(all_params, temperature)  # [N, C, F, I, R]
                is_selected = F.one_hot(index, a.shape[2] * a.shape[3]).view(a.shape).bool()[:, None]
                relaxed = torch.where(is_selected, coupled[..., None, None], relaxed)
            soft = (a[:, None] * relaxed).sum((-2, -1)) + (coupled - coupled.detach())
            return value + (soft - soft.detach())
        a = self._variable_selection(leaf_selection)  # [N, F, I, R]
        if rule == "expected":
            return (a[:, None] * self.leaf.mean()).sum((-2, -1))
        all_params = {k: p.expand((num_samples,) + p.shape) for k, p in self.leaf.params().items()}
        return (a[:, None] * self.leaf.relaxed_params(all_params, temperature)).sum((-2, -1))

    def sample(self, num_samples: int, rule: Rule = "hard", temperature: Tensor | float = 1.0,
               interpolation: Interpolation = "unit", evidence: Tensor | None = None) -> Tensor:
        """Draws ``[N, *event_shape]`` samples with one top-down pass.

        Args:
            num_samples: ``N``; with ``evidence`` it must equal the evidence's batch size.
            rule: ``"hard"`` (exact, no gradient), ``"soft"``, ``"straight_through"``, ``"argmax"``
                or ``"expected"`` (see :mod:`pyro_spn.sampling`).
            temperature: ``τ > 0``.
            interpolation: ``"unit"`` or ``"region"`` (see :meth:`top_down`).
            evidence: ``[N, *event_shape]`` with NaN where a value is to be drawn; observed entries
                are returned unchanged and every choice is drawn from its posterior.
        """
        upward = None
        if evidence is not None:
            if evidence.shape[0] != num_samples:
                raise ValueError(f"evidence: expected batch size {num_samples}, got {evidence.shape[0]}")
            upward = self.upward(evidence, max_product=rule == "argmax")
        return self._complete(num_samples, rule, temperature, interpolation, upward, evidence)

    def _complete(self, num_samples: int, rule: Rule, temperature: Tensor | float, interpolation: Interpolation,
                  upward: UpwardPass | None, evidence: Tensor | None) -> Tensor:
        """Top-down pass and leaf values, observed entries of ``evidence`` kept; ``[N, *event_shape]``."""
        values = self.leaf_values(self.top_down(num_samples, rule, temperature, interpolation, upward),
                                  rule, temperature)
        if evidence is not None:
            observed = self.flatten_data(evidence)
            values = torch.where(torch.isnan(observed), values, observed)
        return self.unflatten_data(values)

    def mpe(self, evidence: Tensor) -> tuple[Tensor, Tensor]:
        """Most probable explanation: max-product upward, argmax down, leaf modes.

        Args:
            evidence: ``[N, *event_shape]``, NaN = to be completed.

        Returns:
            ``(completion [N, *event_shape], log max-product value [N])``; the completion keeps every
            observed entry.
        """
        upward = self.upward(evidence, max_product=True)
        completion = self._complete(evidence.shape[0], "argmax", 1.0, "region", upward, evidence)
        return completion, upward.log_likelihood
