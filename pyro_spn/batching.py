"""Any batch size: row chunking of the batched entry points under a memory budget.

Every batched entry point of :class:`~pyro_spn.SPNDistribution` and
:class:`~pyro_spn.distribution.ConditionalSPNDistribution` (``sample``, ``rsample``, ``log_prob``, ``mpe``,
``mpe_with_log_prob``, the conditional ``mean``) runs its rows in chunks whose *working memory*, the tensors a
call allocates besides its inputs and output, stays within the **memory budget**:

* :data:`DEFAULT_MEMORY_BUDGET` (1 GiB) unless the environment variable ``PYRO_SPN_MEMORY_BUDGET`` says otherwise
  (bytes, or a number with a unit: ``512M``, ``2GiB``, ``1.5G``; read at every call), and
* overridden in-process by :func:`set_memory_budget` or, for a block, ``with memory_budget(bytes): ...``.

The bytes a row needs are estimated by arithmetic from the circuit's shapes and the path that runs
(:func:`upward_row_bytes`, :func:`sampling_row_bytes`), never by trial; a chunk has
``max(1, budget // bytes_per_row)`` rows. A call whose rows fit in one chunk runs exactly as before. Under autograd,
every chunk of a larger call runs under :func:`torch.utils.checkpoint.checkpoint` (its forward recomputed in the
backward with the random state it first ran with), so the graph kept between forward and backward is each chunk's
output, not its intermediates: ``rsample(...).backward()`` and ``log_prob(...).backward()`` are bounded too.

What chunking changes: nothing in ``log_prob``, ``mpe`` and their gradients (each row is computed on its own;
values are equal up to the last bits of summation order); random draws come from the same global generator, chunk
after chunk, so a chunked draw has the same law as an unchunked one and is reproducible for the same seed *and
budget*, but is not the same draw as the unchunked call for that seed (the circuit draws its noise layer by layer
for the whole batch).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .sampling import FAST, Interpolation, Paths, Rule
from .sampling import selections as sel
from .spn import RatSPN

#: The working memory of one call when neither the environment nor :func:`set_memory_budget` says otherwise.
DEFAULT_MEMORY_BUDGET = 2**30
#: The environment variable read for the budget (bytes, or a number with a unit such as ``512M`` or ``2GiB``).
ENVIRONMENT_VARIABLE = "PYRO_SPN_MEMORY_BUDGET"

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_override: int | None = None

#: ``(outputs of one chunk) = f(num_rows, *row_tensors)``; every tensor of the result has the rows first.
RowFunction = Callable[..., "Tensor | tuple[Tensor, ...]"]


def parse_bytes(text: str) -> int:
    """``"1073741824"``, ``"512M"``, ``"2GiB"``, ``"1.5g"`` → bytes (a positive integer); ``ValueError`` otherwise."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgtKMGT]?)(?:i?[bB])?\s*", text)
    if match is None:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: expected bytes such as 1073741824, 512M or 2GiB, got {text!r}")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < 1:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}: the budget must be at least one byte, got {text!r}")
    return value


def _checked_budget(nbytes: int) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
        raise ValueError(f"memory budget: expected a positive number of bytes, got {nbytes!r}")
    return nbytes


def get_memory_budget() -> int:
    """The budget in bytes: :func:`set_memory_budget`'s, else ``$PYRO_SPN_MEMORY_BUDGET``'s, else
    :data:`DEFAULT_MEMORY_BUDGET`."""
    if _override is not None:
        return _override
    text = os.environ.get(ENVIRONMENT_VARIABLE)
    return DEFAULT_MEMORY_BUDGET if text is None or not text.strip() else parse_bytes(text)


def set_memory_budget(nbytes: int | None) -> None:
    """Sets the budget of this process in bytes (``None``: back to the environment's or the default)."""
    global _override
    _override = None if nbytes is None else _checked_budget(nbytes)


@contextmanager
def memory_budget(nbytes: int) -> Iterator[int]:
    """``with memory_budget(2**28): ...`` runs the block under a budget of ``nbytes`` bytes (then restores the
    previous one); yields the budget."""
    global _override
    previous = _override
    _override = _checked_budget(nbytes)
    try:
        yield nbytes
    finally:
        _override = previous


# -- bytes per row, by arithmetic ------------------------------------------------------------------------------
def _layer_shapes(spn: RatSPN) -> list[tuple[int, int, int]]:
    """``(regions L, inputs K_in, outputs K_out)`` of every einsum layer, bottom to top."""
    return [(layer.num_regions, layer.num_inputs, layer.num_outputs) for layer in spn.einsum_layers]


def _leaf_elements(spn: RatSPN) -> int:
    """Elements per row of the leaf layer's upward pass: the gathered statistics and masks ``[R, L, M, C, S]``
    (a few of them, ``S`` up to 2), the leaf regions' values ``[R, L, I]`` (several, with the cancellation bound) and
    the data ``[C, F]``."""
    layer = spn.leaf_layer
    repetitions, regions, slots = layer.leaf_slots.shape
    gathered = repetitions * regions * slots * spn.num_channels
    return 8 * gathered + 6 * repetitions * regions * spn.num_leaves + 8 * spn.num_channels * spn.num_features


def _upward_elements(spn: RatSPN, max_product: bool, grad: bool) -> tuple[int, int]:
    """``(kept, peak)`` elements per row of an upward pass: what stays for a top-down pass (every layer's input and
    output) and the peak while it runs (the leaf layer or a layer's transient on top of what is kept)."""
    repetitions, broadcast = spn.num_repetitions, spn.root.logits.device.type != "cpu"
    kept, transient = 0, []
    for regions, inputs, outputs in _layer_shapes(spn):
        pairs = repetitions * regions * inputs * inputs
        kept += repetitions * (2 * regions * inputs + regions * outputs)
        if max_product:  # the pairs [R, L, K_in²] and the scores [R, L, K_out, K_in²]
            transient.append(pairs * (outputs + 1))
        else:  # pairs, their scaled exponentials and the products on the broadcast path; cache-sized on the CPU
            transient.append(3 * pairs if broadcast else repetitions * regions * (inputs + outputs))
    layers = sum(transient) if grad else max(transient)  # autograd keeps every layer's (amax keeps its scores)
    return kept, kept + max(_leaf_elements(spn), layers)


def upward_row_bytes(spn: RatSPN, max_product: bool = False, grad: bool = False) -> int:
    """Estimated bytes per row of an upward pass (:meth:`~pyro_spn.spn.RatSPN.upward`).

    Counted per row: the leaf layer (:func:`_leaf_elements`); every layer's input ``[R, 2L, K_in]`` and output
    ``[R, L, K_out]``; the largest transient of one layer (every layer's under autograd): the pairs
    ``[R, L, K_in²]`` (three such tensors on the broadcast path of GPUs, cache-sized blocks on the CPU) or, for
    max-product, the scores ``[R, L, K_out, K_in²]`` and the pairs.

    Args:
        spn: the circuit.
        max_product: the max-product pass (:meth:`~pyro_spn.layers.EinsumLayer.forward_max`).
        grad: whether autograd records the pass (keeping what each layer's backward needs).
    """
    return _element_size(spn) * _upward_elements(spn, max_product, grad)[1]


def _selection_elements(children: sel.ChildSelection, repetitions: int, regions: int, units: int, pairs: int,
                        evidence: bool) -> int:
    """Elements per row that one layer's :data:`~pyro_spn.sampling.selections.ChildSelection` allocates."""
    name = getattr(children, "__name__", "")
    region_pairs = repetitions * regions * pairs
    selections = repetitions * regions * units
    if name.startswith("per_unit"):  # logits, noise, perturbed, soft, hard (integer one-hot), the blend
        return 8 * selections * pairs + region_pairs
    if children is sel.exact_unit_draws:  # uniforms, integer draws and their permutation, the scatter
        return 8 * selections
    if children is sel.straight_through_units:  # integer draws, the selected units' [L, Q] logits and noise
        return 8 * selections + 12 * regions * pairs
    if evidence:  # the pairs' log-likelihoods
        return 7 * region_pairs + 2 * selections
    return 6 * region_pairs + 2 * selections  # per region (logits, noise, selections) and the fused kernel


def _leaf_value_elements(spn: RatSPN, rule: Rule, closed_form: bool) -> int:
    """Elements per row of the leaf values (:func:`~pyro_spn.sampling.leaf_values.leaf_values`): one component per
    variable for exact and argmax draws (its parameters and draw); the per-slot sums ``[R, L, M, C]`` of leaves with
    Gaussian relaxations (straight-through, and soft in closed form); else every component ``[C, F, I, R]``."""
    layer = spn.leaf_layer
    variables = spn.num_channels * spn.num_features
    if rule in ("exact", "argmax"):
        return 8 * variables
    closed = rule == "straight_through" or (rule == "soft" and closed_form)
    with torch.no_grad():
        gaussian = closed and spn.leaf.gaussian_relaxation(layer.params()) is not None
    if gaussian:
        repetitions, regions, slots = layer.leaf_slots.shape
        return 4 * repetitions * regions * (slots * spn.num_channels + spn.num_leaves) + 12 * variables
    return 4 * variables * spn.num_leaves * spn.num_repetitions + 12 * variables


def sampling_row_bytes(spn: RatSPN, rule: Rule, interpolation: Interpolation, evidence: bool,
                       paths: Paths = FAST, grad: bool = False) -> int:
    """Estimated bytes per row of :func:`~pyro_spn.sampling.sample` (with the upward pass it needs with evidence).

    Counted per row: the selections reaching every layer ``[R, 2L, K_in]``; each layer's path's transient
    (:func:`_selection_elements`: ``[R, L, K, K_in²]`` for the per-unit reference paths, ``[R, L, K_in²]`` per region
    and for the fused kernel, ``[R, L, K]`` for the inverse-CDF draws); the leaf values; with evidence the upward
    pass's peak, or what it keeps plus the top-down pass. Under autograd (``grad``) every layer's transient is
    counted, else the largest.
    """
    children = paths.children[(rule, interpolation, evidence)]
    repetitions = spn.num_repetitions
    per_layer = [_selection_elements(children, repetitions, regions, outputs, inputs * inputs, evidence)
                 + 3 * repetitions * 2 * regions * inputs for regions, inputs, outputs in _layer_shapes(spn)]
    elements = (sum(per_layer) if grad else max(per_layer)) + _leaf_value_elements(spn, rule, paths.closed_form_leaves)
    if evidence:
        kept, peak = _upward_elements(spn, rule == "argmax", grad)
        elements = max(peak, kept + elements)
    return _element_size(spn) * elements


def amortized_row_bytes(spn: RatSPN, grad: bool = False) -> int:
    """Estimated bytes per row that an amortized circuit (:mod:`pyro_spn.amortized`) adds to a pass: the row's flat
    parameters and their constrained, normalized forms (a few ``[P]``), every component's log-density or draw
    ``[C, F, I, R]`` and every layer's scores ``[R, L, K_out, K_in²]`` (all of them under autograd, else the
    largest)."""
    scores = [spn.num_repetitions * regions * outputs * inputs * inputs
              for regions, inputs, outputs in _layer_shapes(spn)]
    components = spn.num_channels * spn.num_features * spn.num_leaves * spn.num_repetitions
    elements = 4 * spn.flat_parameter_size + 4 * components + (sum(scores) if grad else max(scores))
    return _element_size(spn) * elements


def _element_size(spn: RatSPN) -> int:
    return spn.root.logits.element_size()


# -- chunked calls -----------------------------------------------------------------------------------------------
def chunk_rows(row_bytes: int, budget: int | None = None) -> int:
    """The rows of one chunk: ``max(1, budget // row_bytes)`` (the current budget by default)."""
    budget = get_memory_budget() if budget is None else budget
    return max(1, budget // max(1, row_bytes))


def chunk_sizes(num_rows: int, rows_per_chunk: int) -> list[int]:
    """``num_rows`` split into chunks of ``rows_per_chunk`` (the last one smaller); ``[num_rows]`` if it fits (also
    for zero rows)."""
    if num_rows <= rows_per_chunk:
        return [num_rows]
    full, rest = divmod(num_rows, rows_per_chunk)
    return [rows_per_chunk] * full + ([rest] if rest else [])


def _as_tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def records_graph(*tensors: Tensor | float | None) -> bool:
    """Whether autograd records a computation of these tensors (grad mode on and one of them requires grad)."""
    return torch.is_grad_enabled() and any(isinstance(t, Tensor) and t.requires_grad for t in tensors)


def map_rows(function: RowFunction, num_rows: int, row_bytes: int, inputs: Sequence[Tensor | None] = (),
             anchor: Tensor | None = None, checkpointed: bool = True) -> Tensor | tuple[Tensor, ...]:
    """``function(num_rows, *inputs)`` computed chunk by chunk of rows within the memory budget.

    Args:
        function: ``(rows, *row_inputs) → outputs``, each input and output ``[rows, ...]``.
        num_rows: ``N``, the rows of every input.
        row_bytes: the estimated working memory of one row.
        inputs: ``[N, ...]`` tensors (or ``None``, passed as is) split into chunks along their first dimension.
        anchor: a tensor on the device the computation runs on, so that a checkpoint preserves that device's
            random state even without inputs.
        checkpointed: whether chunks are checkpointed under grad mode (``False`` where nothing requires grad: the
            first checkpoint of a process takes seconds, for importing ``torch._dynamo``).

    Returns:
        The outputs, each ``[N, ...]``: one call if ``N`` fits in one chunk, else the chunks' outputs concatenated;
        under autograd each chunk is checkpointed (recomputed in the backward with its random state).
    """
    sizes = chunk_sizes(num_rows, chunk_rows(row_bytes))
    if len(sizes) == 1:
        return function(num_rows, *inputs)
    chunks: list[tuple[Tensor, ...]] = []
    start = 0
    for size in sizes:
        part = [None if t is None else t[start:start + size] for t in inputs]
        chunks.append(_run_chunk(function, size, part, anchor, checkpointed))
        start += size
    outputs = tuple(torch.cat(pieces) for pieces in zip(*chunks, strict=True))
    return outputs if len(outputs) > 1 else outputs[0]


def _run_chunk(function: RowFunction, size: int, part: list[Tensor | None], anchor: Tensor | None,
               checkpointed: bool) -> tuple[Tensor, ...]:
    """One chunk's outputs; checkpointed under autograd (``anchor`` fixes the device whose random state is kept)."""
    if not (checkpointed and torch.is_grad_enabled()):
        return _as_tuple(function(size, *part))

    def run(_anchor: Tensor | None, *rows: Tensor | None) -> tuple[Tensor, ...]:
        return _as_tuple(function(size, *rows))

    return checkpoint(run, anchor, *part, use_reentrant=False, preserve_rng_state=True)
