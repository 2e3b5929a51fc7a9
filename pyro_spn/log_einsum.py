"""The log-einsum-exp of an einsum layer in a batch-innermost layout, as one autograd function whose forward
and backward work through the layer in cache-sized chunks.

Shapes: ``R`` repetitions, ``L`` output regions (the input has ``2L``: siblings ``2l`` and ``2l + 1``),
``K`` units per child region, ``K_out`` per output region, ``N`` batch, ``G = R * L`` groups.

``out[r, l, k, n] = log Σ_ij w[r, l, k, i * K + j] · exp(x[r, 2l, i, n] + x[r, 2l + 1, j, n])``,
``w = softmax(logits)`` over the ``K * K`` pairs,

is computed with each child region shifted by its maximum, as a contraction of the weights with the products
of all pairs of shifted, exponentiated children; the rare entries whose mixture falls so far below the best pair
that the children's floor (:func:`exp_floor`) could show in it (:func:`exact_threshold`) are recomputed as a direct
log-sum-exp over their pairs (:func:`pairs_log_sum_exp`), so the result is exact whatever the spread of the values.
On the CPU, in float32 and float64, the native kernel
(:func:`pyro_spn.native.bilinear`) contracts them in one pass, the products of pairs never leaving registers;
the children's gradients are the same contraction with the weights permuted. Otherwise (no C compiler, other
dtypes or devices) the contraction is a batched matmul with the ``[G, K * K, N]`` products of pairs, the largest
tensor, which :class:`ChunkedLogEinsum` never holds all at once (a chunk of groups at a time, so that they are
still in cache when the matmul reads them) and whose backward recomputes them instead of storing them. The
weights' gradient always takes that route (a matmul of the upstream gradient with the pairs, chunk by chunk).
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from . import native

#: Shifted child log-likelihoods are floored at this fraction of log(smallest normal float) before exp:
#: -30.6 nats in float32, -248 in float64.
EXP_FLOOR_FRACTION = 0.35

#: Products of pairs are formed in chunks of groups of about this many bytes, so that the matmul reads them from
#: cache (2 to 4 MiB were the fastest of 0.25 to 32 MiB on the paper's workload, forward and backward, on a
#: 2-core machine with 1 MiB of L2 per core and 32 MiB of L3: smaller chunks cost more in per-chunk overhead).
PAIRS_CHUNK_BYTES = 4 * 2**20


def stable_max(x: Tensor, dim: int = -1) -> Tensor:
    """``max`` over ``dim`` (kept), with non-finite maxima replaced by 0 (no gradient)."""
    return x.detach().amax(dim, keepdim=True).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def exp_floor(dtype: torch.dtype) -> float:
    """The floor of shifted child log-likelihoods before exp.

    Children more than ``|floor|`` nats below their region's best are raised to it, so that products of pairs and
    weights stay normal floats: subnormal arithmetic is ~10x slower on CPUs. Their true share of a mixture is
    below the precision unless the mixture itself is tiny (its heavily weighted pairs far below the best pair);
    such entries are recomputed exactly (:func:`exact_threshold`).
    """
    return EXP_FLOOR_FRACTION * math.log(torch.finfo(dtype).tiny)


def exact_threshold(dtype: torch.dtype) -> float:
    """The smallest shifted mixture the floored contraction computes to the dtype's precision.

    Raising children to the floor adds less than ``e^floor`` to a mixture (the weights sum to 1 and every other
    factor is at most 1), a relative error below ``e^floor / mixed``: at most the dtype's epsilon above this
    threshold (about 4e-7 in float32). Entries below it are recomputed exactly.
    """
    return math.exp(exp_floor(dtype)) / torch.finfo(dtype).eps


def inexact_entries(mixed: Tensor) -> Tensor | None:
    """The indices ``[B, mixed.dim()]`` of the entries of shifted mixtures ``mixed`` below :func:`exact_threshold`
    (to be recomputed), or None if there are none (the common case: a comparison and a reduction)."""
    below = mixed < exact_threshold(mixed.dtype)
    return below.nonzero() if bool(below.any()) else None


def pairs_log_sum_exp(left: Tensor, right: Tensor, logits: Tensor) -> Tensor:
    """``log Σ_ij w[i * K + j] · exp(left_i + right_j)``, ``w = softmax(logits)``, as a direct log-sum-exp over the
    pairs (:func:`log_sum_exp`), a chunk of entries at a time: exact whatever the spread.

    Args:
        left, right: ``[B, K]`` child log-likelihoods of ``B`` entries.
        logits: ``[B, K * K]`` their unnormalized log-weights.

    Returns:
        ``[B]``.
    """
    size = _entry_chunk(logits.shape[-1])
    parts = [_pairs_log_sum_exp(*chunk) for chunk in zip(left.split(size), right.split(size), logits.split(size),
                                                         strict=True)]
    return torch.cat(parts) if parts else left.new_empty(0)


def _pairs_log_sum_exp(left: Tensor, right: Tensor, logits: Tensor) -> Tensor:
    """:func:`pairs_log_sum_exp` of one chunk."""
    return log_sum_exp(_pair_scores(left, right, logits.log_softmax(-1)))


def _pair_scores(left: Tensor, right: Tensor, log_weights: Tensor) -> Tensor:
    """``log w_ij + left_i + right_j`` of every pair: ``[B, K]``, ``[B, K]``, ``[B, K * K]`` → ``[B, K * K]``."""
    return (left[:, :, None] + right[:, None, :]).flatten(1) + log_weights


def log_sum_exp(scores: Tensor) -> Tensor:
    """``log Σ exp`` over the last dim, ``-inf`` where every score is ``-inf``, with a zero gradient there where
    ``torch.logsumexp``'s is NaN: ``[..., Q]`` → ``[...]``."""
    shift = stable_max(scores)
    total = (scores - shift).exp().sum(-1, keepdim=True)
    possible = total > 0
    log_total = torch.where(possible, total, torch.ones_like(total)).log()
    return torch.where(possible, log_total + shift, torch.full_like(total, -math.inf))[..., 0]


def _entry_chunk(num_pairs: int) -> int:
    """How many entries recomputed at once have pairs (``[b, K * K]``) of about ``PAIRS_CHUNK_BYTES`` in float64."""
    return max(1, PAIRS_CHUNK_BYTES // (8 * num_pairs))


def log_einsum(x: Tensor, logits: Tensor) -> Tensor:
    """The layer's log-einsum-exp with :class:`ChunkedLogEinsum`.

    Args:
        x: child log-likelihoods ``[R, 2L, K, N]``.
        logits: unnormalized log-weights ``[R, L, K_out, K * K]`` (normalized by softmax over the last dim),
            pair ``(i, j)`` at ``i * K + j``.

    Returns:
        ``[R, L, K_out, N]``.
    """
    return ChunkedLogEinsum.apply(x, logits)


def log_einsum_reference(x: Tensor, logits: Tensor) -> Tensor:
    """:func:`log_einsum` in plain differentiable operations (no floor, no chunks of pairs): the reference the
    chunked function is tested against, and its backward under ``create_graph``."""
    shift = stable_max(x, dim=-2)  # [R, 2L, 1, N]
    children = _as_children(torch.exp(x - shift))
    flat_logits = logits.flatten(0, 1)  # [G, K_out, K * K]
    mixed = flat_logits.softmax(-1) @ _pairs(children)  # [G, K_out, N]
    out = mixed.clamp_min(torch.finfo(x.dtype).tiny).log() + _pair_shift(shift).flatten(0, 1)
    entries = inexact_entries(mixed.detach())
    if entries is not None:
        out = out.index_put(tuple(entries.T), _exact_entries(x, flat_logits, entries))
    return out.view(logits.shape[:-1] + x.shape[-1:])


def _as_children(scaled: Tensor) -> Tensor:
    """``[R, 2L, K, N]`` → ``[G, 2, K, N]``: every group's left and right child."""
    repetitions, two_regions, num_inputs, num_samples = scaled.shape
    return scaled.reshape(repetitions * (two_regions // 2), 2, num_inputs, num_samples)


def _pair_shift(shift: Tensor) -> Tensor:
    """The shift of each output region, its children's shifts added: ``[R, 2L, 1, N]`` → ``[R, L, 1, N]``."""
    repetitions, two_regions, _, num_samples = shift.shape
    return shift.view(repetitions, two_regions // 2, 2, num_samples).sum(2, keepdim=True)


def _pairs(children: Tensor, out: Tensor | None = None) -> Tensor:
    """Products of all pairs of a left and a right child: ``[G, 2, K, N]`` → ``[G, K * K, N]``, pair ``(i, j)``
    (``left_i · right_j``) at ``i * K + j``; written into ``out`` (``[>= G, K * K, N]``) when given."""
    groups, _, num_inputs, num_samples = children.shape
    shape = (groups, num_inputs, num_inputs, num_samples)
    pairs = torch.mul(children[:, 0, :, None, :], children[:, 1, None, :, :],
                      out=None if out is None else out[:groups].view(shape))
    return pairs.view(groups, num_inputs * num_inputs, num_samples)


def _entry_children(x: Tensor, entries: Tensor) -> tuple[Tensor, Tensor]:
    """The left and right children ``[B, K]`` of the entries ``[B, 3]`` ``(group, unit, sample)`` of ``x``
    ``[R, 2L, K, N]``."""
    children = _as_children(x)
    group, sample = entries[:, 0], entries[:, 2]
    return children[group, 0, :, sample], children[group, 1, :, sample]


def _exact_entries(x: Tensor, flat_logits: Tensor, entries: Tensor) -> Tensor:
    """:func:`pairs_log_sum_exp` of the entries ``[B, 3]`` ``(group, unit, sample)`` of the layer's output
    (differentiable); ``x`` ``[R, 2L, K, N]``, ``flat_logits`` ``[G, K_out, K * K]``; returns ``[B]``."""
    return pairs_log_sum_exp(*_entry_children(x, entries), flat_logits[entries[:, 0], entries[:, 1]])


def _use_native(children: Tensor) -> bool:
    """Whether the native kernel takes these children (CPU, float32 or float64, and it was built)."""
    return children.device.type == "cpu" and children.dtype in (torch.float32, torch.float64) and native.available()


def _chunks(children: Tensor) -> list[slice]:
    """Slices of the groups of ``children`` ``[G, 2, K, N]`` whose pairs take about ``PAIRS_CHUNK_BYTES``."""
    groups, _, num_inputs, num_samples = children.shape
    group_bytes = max(1, num_inputs * num_inputs * num_samples * children.element_size())
    chunk = max(1, PAIRS_CHUNK_BYTES // group_bytes)
    return [slice(start, min(start + chunk, groups)) for start in range(0, groups, chunk)]


#: Per thread, the chunk buffers of the last calls by ``(device, dtype, role)``, kept up to this many bytes each:
#: a fresh multi-MiB buffer per call costs page faults that slowed the paper's first layer by up to 2x.
_KEPT_BUFFER_BYTES = 2 * PAIRS_CHUNK_BYTES
_workspace = threading.local()


def _chunk_buffer(children: Tensor, chunks: list[slice], role: int) -> Tensor:
    """Room for one chunk's pairs, ``[g, K * K, N]``, reused by every chunk of a call and, up to
    ``_KEPT_BUFFER_BYTES``, by later calls in the same thread (``role`` tells a call's buffers apart)."""
    _, _, num_inputs, num_samples = children.shape
    shape = (chunks[0].stop - chunks[0].start, num_inputs * num_inputs, num_samples)
    numel = math.prod(shape)
    if numel * children.element_size() > _KEPT_BUFFER_BYTES:
        return children.new_empty(shape)
    buffers = _workspace.__dict__.setdefault("buffers", {})
    key = (children.device, children.dtype, role)
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < numel:
        buffer = buffers[key] = children.new_empty(numel)
    return buffer[:numel].view(shape)


class ChunkedLogEinsum(torch.autograd.Function):
    """:func:`log_einsum` with a manual backward; see the module docstring.

    Forward: ``weights = softmax(logits)``; shift, floor and exponentiate the children in place, then
    ``mixed = weights @ pairs`` by the native kernel or, per chunk of groups, by forming the pairs and a batched
    matmul; the output is ``log mixed`` plus the shifts, except at the entries whose ``mixed`` is below
    :func:`exact_threshold` (:func:`inexact_entries`), which are a direct log-sum-exp over their pairs
    (:func:`pairs_log_sum_exp`).

    Backward, with ``g = grad / mixed`` (zero at the recomputed entries), per chunk:
    ``grad_weights = g @ pairsᵀ`` and at once, while it is in cache, through the softmax (``w ⊙ (g_w - Σ w ⊙ g_w)``,
    in place); ``grad_pairs = weightsᵀ @ g``, times the pairs (through exp: ``∂ pair_ij / ∂ x_left_i = pair_ij``),
    summed over the right child for the left child's gradient and over the left for the right's (the native
    kernel computes these two sums directly, as ``Σ_j right_j Σ_k w[k, i, j] g_k`` and its mirror, then times
    the child); then through the floor (zero where a child was floored). The recomputed entries add their
    exact gradients (:func:`_entries_backward`). The shifts cancel and carry no gradient. Under ``create_graph``
    the gradients are those of :func:`log_einsum_reference`, so higher derivatives work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, logits: Tensor) -> Tensor:
        """``x`` ``[R, 2L, K, N]``, ``logits`` ``[R, L, K_out, K * K]`` → ``[R, L, K_out, N]``."""
        repetitions, regions, num_outputs, num_pairs = logits.shape
        weights = logits.softmax(-1)
        num_samples = x.shape[-1]
        shift = stable_max(x, dim=-2)  # [R, 2L, 1, N]
        floor = exp_floor(x.dtype)
        shifted = x - shift
        kept = shifted > floor if ctx.needs_input_grad[0] else None
        children = _as_children(shifted.clamp_min_(floor).exp_()).contiguous()  # [G, 2, K, N]
        flat_weights = weights.reshape(repetitions * regions, num_outputs, num_pairs)
        mixed = x.new_empty(repetitions * regions, num_outputs, num_samples)
        if _use_native(children):
            num_inputs = children.shape[2]
            native.bilinear(children[:, 0], children[:, 1],
                            flat_weights.view(-1, num_outputs, num_inputs, num_inputs), out=mixed)
        else:
            chunks = _chunks(children)
            buffer = _chunk_buffer(children, chunks, role=0)
            for part in chunks:
                torch.matmul(flat_weights[part], _pairs(children[part], buffer), out=mixed[part])
        entries = inexact_entries(mixed)  # [B, 3]: (group, unit, sample), or None
        inverse = mixed.reciprocal() if any(ctx.needs_input_grad) else None
        exact = None if entries is None else _exact_entries(x, logits.flatten(0, 1), entries)
        out = mixed.log_().view(repetitions, regions, num_outputs, num_samples).add_(_pair_shift(shift))
        if entries is not None and exact is not None:  # (both or neither)
            out.view(mixed.shape).index_put_(tuple(entries.T), exact)
            if inverse is not None:
                inverse.index_put_(tuple(entries.T), inverse.new_zeros(()))
        ctx.save_for_backward(x, logits, weights, children, kept, inverse, entries, exact)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``grad`` ``[R, L, K_out, N]`` → gradients of ``x`` and ``logits`` (None where not needed)."""
        x, logits, weights, children, kept, inverse, entries, exact = ctx.saved_tensors
        need_x, need_logits = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph
            inputs = [t for t, needed in zip((x, logits), ctx.needs_input_grad, strict=True) if needed]
            grads = iter(torch.autograd.grad(log_einsum_reference(x, logits), inputs, grad, create_graph=True))
            return next(grads) if need_x else None, next(grads) if need_logits else None
        groups = children.shape[0]
        g = (grad.reshape(inverse.shape) * inverse).contiguous()  # [G, K_out, N]
        flat_weights = weights.reshape(groups, *weights.shape[2:])
        grad_children = torch.empty_like(children) if need_x else None  # of the log-children x
        grad_logits = torch.empty_like(flat_weights) if need_logits else None
        if grad_children is not None and _use_native(children):
            _children_grad_native(children, g, flat_weights, grad_children)
            _backward_in_chunks(children, g, flat_weights, grad_logits, None)
        else:
            _backward_in_chunks(children, g, flat_weights, grad_logits, grad_children)
        grad_x = None if grad_children is None else grad_children.view(x.shape).mul_(kept)
        grad_logits_out = None if grad_logits is None else grad_logits.view(logits.shape)
        if entries is not None:
            _entries_backward(x, logits, entries, exact, grad, grad_x, grad_logits_out)
        return grad_x, grad_logits_out


def _entries_backward(x: Tensor, logits: Tensor, entries: Tensor, exact: Tensor, grad: Tensor,
                      grad_x: Tensor | None, grad_logits: Tensor | None) -> None:
    """Adds the gradients of the recomputed entries ``[B, 3]`` ``(group, unit, sample)``, whose values were
    ``exact`` ``[B]``, into ``grad_x`` ``[R, 2L, K, N]`` and ``grad_logits`` ``[R, L, K_out, K * K]`` (each where
    given), for the upstream ``grad`` ``[R, L, K_out, N]``.

    With ``p`` the posterior of the pairs, ``w_ij exp(left_i + right_j - exact)`` (zero where ``exact`` is
    ``-inf``), times the upstream gradient: the left child's gradient is ``Σ_j p_ij``, the right's ``Σ_i p_ij``,
    the logits' ``p - g · w`` (through the softmax).
    """
    num_inputs = x.shape[2]
    flat_logits = logits.flatten(0, 1)
    upstream = grad.flatten(0, 1)[tuple(entries.T)]  # [B]
    size = _entry_chunk(flat_logits.shape[-1])
    for part, value, g in zip(entries.split(size), exact.split(size), upstream.split(size), strict=True):
        group, unit, sample = part.unbind(1)
        left, right = _entry_children(x, part)
        log_w = flat_logits[group, unit].log_softmax(-1)  # [b, K * K]
        scores = _pair_scores(left, right, log_w)
        possible = torch.isfinite(value)[:, None]
        posterior = torch.where(possible, (scores - value[:, None]).exp(), 0.0) * g[:, None]
        if grad_x is not None:
            square = posterior.view(-1, num_inputs, num_inputs)
            by_sample = _as_children(grad_x).transpose(2, 3)  # [G, 2, N, K]
            for side, marginal in enumerate((square.sum(2), square.sum(1))):
                by_sample.index_put_((group, torch.full_like(group, side), sample), marginal, accumulate=True)
        if grad_logits is not None:
            gradient = posterior - g[:, None] * log_w.exp()
            grad_logits.flatten(0, 1).index_put_((group, unit), gradient, accumulate=True)


def _children_grad_native(children: Tensor, g: Tensor, weights: Tensor, out: Tensor) -> None:
    """The gradient of the children's logs by the native kernel, into ``out`` ``[G, 2, K, N]``: for the left child
    ``left_i · Σ_j right_j Σ_k w[k, i, j] g_k``, and its mirror for the right.

    ``children`` ``[G, 2, K, N]`` (shifted, exponentiated), ``g`` ``[G, K_out, N]``, ``weights`` ``[G, K_out, K²]``.
    """
    groups, _, num_inputs, _ = children.shape
    square = weights.view(groups, -1, num_inputs, num_inputs)  # [G, k, i, j]
    native.bilinear(children[:, 1], g, square.permute(0, 2, 3, 1), out=out[:, 0])  # weights as [G, i, j, k]
    native.bilinear(children[:, 0], g, square.permute(0, 3, 2, 1), out=out[:, 1])  # weights as [G, j, i, k]
    out.mul_(children)  # through exp


def _backward_in_chunks(children: Tensor, g: Tensor, weights: Tensor, grad_logits: Tensor | None,
                        grad_children: Tensor | None) -> None:
    """The gradients with the products of pairs, a chunk of groups at a time: of the logits (through the softmax)
    into ``grad_logits`` ``[G, K_out, K²]`` and of the children's logs into ``grad_children`` ``[G, 2, K, N]``,
    each where given.

    ``children`` ``[G, 2, K, N]`` (shifted, exponentiated), ``g`` ``[G, K_out, N]``, ``weights`` ``[G, K_out, K²]``.
    """
    if grad_logits is None and grad_children is None:
        return
    _, _, num_inputs, num_samples = children.shape
    chunks = _chunks(children)
    pairs_buffer = _chunk_buffer(children, chunks, role=0)
    grad_pairs_buffer = _chunk_buffer(children, chunks, role=1) if grad_children is not None else None
    for part in chunks:
        size = part.stop - part.start
        pairs = _pairs(children[part], pairs_buffer)
        if grad_logits is not None:
            grad_weights = torch.matmul(g[part], pairs.transpose(1, 2), out=grad_logits[part])
            scaled = grad_weights.mul_(weights[part])  # softmax backward, in place
            scaled.addcmul_(weights[part], scaled.sum(-1, keepdim=True), value=-1.0)
        if grad_children is not None:
            assert grad_pairs_buffer is not None
            grad_pairs = torch.matmul(weights[part].transpose(1, 2), g[part], out=grad_pairs_buffer[:size])
            # through exp: d/dx_left_i = Σ_j grad_pairs[i, j] · left_i · right_j, so one product with the pairs
            through_exp = grad_pairs.mul_(pairs).view(size, num_inputs, num_inputs, num_samples)  # [g, i, j, N]
            torch.sum(through_exp, 2, out=grad_children[part, 0])
            torch.sum(through_exp, 1, out=grad_children[part, 1])
