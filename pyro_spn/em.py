"""Mini-batch (stochastic) expectation-maximization for :class:`~pyro_spn.spn.RatSPN`.

**E-step by one backward pass.** With ``L = Σ_n log p(x_n)`` over a batch, the expected statistics of EM are
derivatives of ``L`` (Darwiche's differential approach; Peharz et al., *Einsum Networks*, 2020):

* the expected count of a sum edge is ``n_kj = w_kj ∂L/∂w_kj = ∂L/∂(log w_kj)``. The circuit stores logits
  (``w = softmax(logits)``), whose gradient is ``n_kj − w_kj S_k`` with ``S_k = Σ_j n_kj = ∂L/∂(log S_k)``,
  the flow reaching sum unit ``k`` (the gradient w.r.t. its output); so ``n_kj = ∂L/∂logits_kj + w_kj S_k``;
* the posterior probability ``q_n`` that leaf component ``(i, r)`` of variable ``f`` generated ``x_nf`` is the
  gradient of ``log p(x_n)`` w.r.t. the log-likelihood of its leaf region (the flows of
  :func:`pyro_spn.expectations.posterior_flows`, here from the same backward pass); the component's expected
  count is ``Σ_n q_n`` and its expected sufficient statistic ``Σ_n q_n T(x_nf)``, over the observed entries
  only (a NaN entry's leaf is marginalized: it contributes nothing, the EM of the observed-data likelihood).

One autograd backward of ``L`` w.r.t. the leaf regions, the einsum layers' outputs and logits, and the
repetitions gives every statistic (:func:`expected_counts`).

**M-step** (:class:`EM`): sum weights ``w_kj ∝ n_kj + α`` (a Dirichlet prior of pseudo-count ``weight_prior``);
leaves by their family's own M-step, :meth:`pyro_spn.leaves.Leaf.maximize`, from the expected counts and
sufficient statistics: closed forms (Normal, LogNormal, Binomial, Bernoulli, Categorical, Poisson, Geometric,
NegativeBinomial, Exponential; pseudo-count ``leaf_prior`` for the discrete ones, ``min_variance`` for the Gaussian
ones), Newton steps (Gamma's shape, Beta), moment matching by Newton's method (``ExponentialFamily``), each group of
a Mixed leaf by its own family.

Components and sum units that received no flow at all keep their parameters.

**Stochastic EM** keeps running averages of the per-example statistics, ``s ← (1 − ρ_t) s + ρ_t ŝ_batch``, and
maximizes after every batch (stepwise EM; online EM of Einsum Networks): ``ρ_t = (t + offset)^(−decay)`` by
default, ``ρ_0 = 1``, or a fixed ``step_size``; ``step_size=1`` on the whole data set is classical
(full-batch) EM, which never decreases the training likelihood (with ``weight_prior = leaf_prior = 0``; with
priors it never decreases the posterior). The priors are pseudo-counts added to those per-example averages: a
prior ``α`` weighs like ``α·N`` pseudo-counts in full-batch EM over ``N`` examples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from . import checks
from .leaves.base import LOG_FLOOR, MAX_LOGIT
from .spn import RatSPN

#: The layout of :meth:`EM.state_dict` (version 1 named the leaf statistics ``leaf{g}_count`` and ``leaf{g}_sum`` per
#: group of a Mixed leaf; its states of circuits with one family still load).
STATE_VERSION = 2
#: Version 1's names of the leaf statistics of a circuit with one leaf family.
_VERSION_1_NAMES = {"leaf0_count": "leaf_count", "leaf0_sum": "leaf_sum"}
#: Sums a float64 vector over the processes of a data-parallel run (:meth:`EM.step`).
Reduce = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EMOptions:
    """The hyper-parameters of :class:`EM` (validated by :meth:`validate`).

    Attributes:
        step_size: a fixed ``ρ`` in ``(0, 1]``, or ``None`` for ``ρ_t = (t + offset)^(−decay)`` (``ρ_0 = 1``).
        decay: in ``(0.5, 1]`` (the Robbins–Monro conditions).
        offset: ``>= 1``.
        weight_prior: Dirichlet pseudo-count ``>= 0`` of every sum edge (per example of the running averages).
        leaf_prior: Beta / Dirichlet / Gamma pseudo-count ``>= 0`` of the discrete leaves and Exponential ones
            (see each family's ``moment_match``).
        min_variance: ``> 0``, the smallest variance of a Normal leaf (of ``log x`` for a LogNormal one).
    """

    step_size: float | None = None
    decay: float = 0.6
    offset: float = 2.0
    weight_prior: float = 1e-6
    leaf_prior: float = 1e-6
    min_variance: float = 1e-3

    def validate(self) -> EMOptions:
        if self.step_size is not None:
            checks.number("step_size", self.step_size, minimum=0.0, maximum=1.0, open_minimum=True)
        checks.number("decay", self.decay, minimum=0.5, maximum=1.0, open_minimum=True)
        checks.number("offset", self.offset, minimum=1.0)
        checks.non_negative("weight_prior", self.weight_prior)
        checks.non_negative("leaf_prior", self.leaf_prior)
        checks.positive("min_variance", self.min_variance)
        return self

    def rate(self, step: int) -> float:
        """``ρ`` of update number ``step`` (0-based): 1 for the first, then the fixed or decaying step size."""
        if step == 0:
            return 1.0
        return self.step_size if self.step_size is not None else (step + self.offset) ** -self.decay


# -- E-step -----------------------------------------------------------------------------------------------------
@contextmanager
def _requiring_grad(module: nn.Module) -> Iterator[None]:
    """Every parameter of ``module`` requires grad inside the block (restored after), with grad mode on."""
    previous = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in previous:
            p.requires_grad_(True)
        with torch.enable_grad():
            yield
    finally:
        for p, flag in previous:
            p.requires_grad_(flag)


def expected_counts(spn: RatSPN, x: Tensor) -> tuple[dict[str, Tensor], int, float]:
    """The E-step of a batch: the expected counts and sufficient statistics summed over its examples.

    Args:
        spn: the circuit.
        x: ``[N, *event_shape]``, NaN = missing. Examples of log-likelihood ``-inf`` (outside the support)
            are left out.

    Returns:
        ``(statistics, examples, log_likelihood)``: float64 tensors on the circuit's device,
        ``"root"`` ``[R]`` (repetition counts), ``"einsum{k}"`` ``[R, L, K_out, K_in²]`` (edge counts of einsum layer
        ``k``, bottom to top), ``"flow{k}"`` ``[R, L, K_out]`` (flows into its sum units), ``"leaf_count"``
        ``[C, F, I, R]`` and ``"leaf_sum"`` ``[C, F, I, R, S]`` (for a Mixed leaf, each group's statistics padded
        with zeros to the largest ``S``); the number of examples counted; the sum of their log-likelihoods.

    Raises:
        ValueError: no example has a finite log-likelihood.
    """
    with _requiring_grad(spn):
        upward = spn.upward(x)
        finite = torch.isfinite(upward.log_likelihood)
        examples = int(finite.sum())
        if examples == 0:
            raise ValueError("x: no example has a finite log-likelihood under the circuit")
        total = upward.log_likelihood[finite].sum()
        layers = spn.einsum_layers
        outputs = [*upward.layer_inputs[1:], upward.repetition_log_likelihood]
        grads = torch.autograd.grad(total, [upward.layer_inputs[0], *outputs, *(layer.logits for layer in layers)])
    leaf_flow, output_flows, logit_grads = grads[0], grads[1:1 + len(layers)], grads[1 + len(layers):]
    stats = {"root": output_flows[-1].double().sum(0)}
    for k, (layer, flow, grad) in enumerate(zip(layers, output_flows, logit_grads, strict=True)):
        unit_flow = flow.double().sum(0)  # [R, L, K_out] (the last layer's: [R], one unit per repetition)
        unit_flow = unit_flow.reshape(layer.num_repetitions, layer.num_regions, layer.num_outputs)
        weights = layer.logits.detach().double().flatten(-2).softmax(-1)
        stats[f"flow{k}"] = unit_flow
        stats[f"einsum{k}"] = (grad.double().flatten(-2) + weights * unit_flow[..., None]).clamp_min(0.0)
    stats.update(_leaf_statistics(spn, x, leaf_flow))
    return stats, examples, float(total.detach())


def _leaf_statistics(spn: RatSPN, x: Tensor, leaf_flow: Tensor) -> dict[str, Tensor]:
    """``"leaf_count"`` ``[C, F, I, R]`` and ``"leaf_sum"`` ``[C, F, I, R, S]`` from the flows into the leaf regions
    ``leaf_flow`` ``[N, R, L, I]`` and the data ``x`` ``[N, *event_shape]``.

    Per leaf region, one batched matmul of its flows ``[I, N]`` with its slots' statistics ``[N, M·C·(1 + S)]``
    (the observed indicator, then ``T(x)`` of the observed entries), then the slots are scattered to their variables.
    The sums are float64: the M-steps take differences of them that cancel (``E[x²] − E[x]²``, ``log E[x] − E[log x]``).
    """
    layer = spn.leaf_layer
    flat = spn.flatten_data(x.detach())  # [N, C, F]
    observed = torch.isfinite(flat)
    values = torch.where(observed, flat, torch.zeros_like(flat))
    flow = leaf_flow.detach().permute(1, 2, 3, 0).double()  # [R, L, I, N]
    num_samples = flat.shape[0]
    repetitions, regions, slots = layer.leaf_slots.shape
    weights = observed[..., None].double()
    stats = spn.leaf.sufficient_statistics(values).double() * weights  # T(x) in the circuit's dtype, as it evaluates
    full = torch.cat([weights, stats], dim=-1)  # [N, C, F, W]
    width = full.shape[-1]
    data = layer.data_slots(full).reshape(repetitions, regions, slots * flat.shape[1] * width, num_samples)
    per_slot = torch.matmul(flow, data.transpose(-1, -2))  # [R, L, I, M·C·W]
    per_slot = per_slot.view(repetitions, regions, -1, slots, flat.shape[1], width).movedim(2, 3)  # [R, L, M, I, C, W]
    by_variable = per_slot.new_zeros((repetitions, flat.shape[2] + 1) + per_slot.shape[3:])  # padding: index F
    repetition = torch.arange(repetitions, device=flat.device)[:, None, None]
    by_variable[repetition, layer.leaf_slots] = per_slot
    result = by_variable[:, :-1].permute(3, 1, 2, 0, 4)  # [C, F, I, R, W]
    return {"leaf_count": result[..., 0].contiguous(), "leaf_sum": result[..., 1:].contiguous()}


# -- M-step -----------------------------------------------------------------------------------------------------
def _maximize_weights(edges: Tensor, flow: Tensor, prior: float) -> Tensor:
    """Normalized log-weights ``[..., J]`` of edge counts ``edges [..., J]`` and unit flows ``flow [...]``; NaN for
    units without flow (the caller keeps the old)."""
    log_weights = (torch.log(edges + prior) - torch.log(flow[..., None] + edges.shape[-1] * prior)).clamp_min(LOG_FLOOR)
    return log_weights.masked_fill((flow <= 0)[..., None], math.nan)


def _reduced(stats: dict[str, Tensor], examples: int, total: float,
             reduce: Reduce) -> tuple[dict[str, Tensor], int, float]:
    """``(stats, examples, total)`` summed over the processes by ``reduce`` (one call, on one flat vector)."""
    names = sorted(stats)
    first = stats[names[0]]
    head = torch.tensor([float(examples), total], dtype=torch.float64, device=first.device)
    flat = reduce(torch.cat([head, *(stats[name].flatten() for name in names)]))
    out, start = {}, 2
    for name in names:
        size = stats[name].numel()
        out[name] = flat[start:start + size].view_as(stats[name])
        start += size
    return out, int(round(float(flat[0]))), float(flat[1])


def _assign(parameter: Tensor, value: Tensor) -> None:
    """Writes ``value`` (same number of elements, any dtype) into ``parameter`` in place, where it is not NaN."""
    value = value.reshape(parameter.shape).to(parameter.dtype)
    with torch.no_grad():
        parameter.copy_(torch.where(torch.isnan(value), parameter, value))


class EM:
    """Mini-batch EM for the sum weights and leaves of a :class:`~pyro_spn.spn.RatSPN`, with an optimizer-like
    interface: :meth:`step` per batch, :meth:`state_dict` / :meth:`load_state_dict` for checkpoints.

    Args:
        spn: the circuit, of any leaf family with an M-step (:attr:`pyro_spn.leaves.Leaf.maximizable`: every
            built-in family, and a Mixed leaf of them).
        step_size, decay, offset, weight_prior, leaf_prior, min_variance: see :class:`EMOptions`.

    Raises:
        TypeError: ``spn`` is not a RatSPN; an argument of the wrong type.
        ValueError: leaves whose family has no M-step (named); an argument out of range (named).

    Example: full-batch EM is ``EM(spn, step_size=1.0)`` and ``em.step(train)`` per iteration.
    """

    def __init__(self, spn: RatSPN, *, step_size: float | None = None, decay: float = 0.6, offset: float = 2.0,
                 weight_prior: float = 1e-6, leaf_prior: float = 1e-6, min_variance: float = 1e-3) -> None:
        if not isinstance(spn, RatSPN):
            raise TypeError(f"spn must be a pyro_spn.RatSPN, got {type(spn).__name__}")
        if not spn.leaf.maximizable:
            raise ValueError(f"spn: EM cannot fit {spn.leaf!r} leaves: their family has no M-step "
                             f"(Leaf.moment_match)")
        self.spn = spn
        self.options = EMOptions(step_size, decay, offset, weight_prior, leaf_prior, min_variance).validate()
        self.num_steps = 0
        self.statistics: dict[str, Tensor] = {}

    def step(self, x: Tensor, reduce: Reduce | None = None) -> float:
        """One E-step on the batch ``x [N, *event_shape]`` (NaN = missing), the running averages updated, then the
        M-step written into the circuit's parameters. Returns the batch's mean log-likelihood before the update
        (over its examples of finite likelihood).

        Args:
            x: the batch (on a data-parallel run: this process's shard).
            reduce: on a data-parallel run, sums a float64 vector over the processes (e.g. ``torch.distributed``'s
                ``all_reduce``, returning the sum), so that every process takes the same M-step from the statistics of
                the whole batch; ``None`` for one process.
        """
        batch, examples, total = expected_counts(self.spn, x)
        if reduce is not None:
            batch, examples, total = _reduced(batch, examples, total, reduce)
        rate = self.options.rate(self.num_steps)
        for name, value in batch.items():
            mean = value / examples
            old = self.statistics.get(name)
            self.statistics[name] = mean if old is None else old.mul(1.0 - rate).add_(mean, alpha=rate)
        self.num_steps += 1
        self._maximize()
        return total / examples

    def _maximize(self) -> None:
        """Writes the maximizers of the running statistics into the circuit."""
        stats, options, spn = self.statistics, self.options, self.spn
        for k, layer in enumerate(spn.einsum_layers):
            _assign(layer.logits, _maximize_weights(stats[f"einsum{k}"], stats[f"flow{k}"], options.weight_prior))
        root = stats["root"]
        _assign(spn.root.logits, _maximize_weights(root, root.sum(), options.weight_prior))
        parameters: dict[str, Tensor] = dict(spn.leaf_layer.named_parameters())
        fitted = spn.leaf.maximize(stats["leaf_count"], stats["leaf_sum"], parameters, prior=options.leaf_prior,
                                   min_variance=options.min_variance)
        for name, value in fitted.items():
            _assign(parameters[name], value)

    # -- checkpoints ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """``{"version", "options", "num_steps", "statistics"}``: plain values and CPU tensors (loadable with
        ``torch.load(..., weights_only=True)``)."""
        return {"version": STATE_VERSION, "options": asdict(self.options), "num_steps": self.num_steps,
                "statistics": {name: value.detach().cpu().clone() for name, value in self.statistics.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (of an EM with the same options over a circuit of the same shape).

        Raises:
            ValueError: another version, other options, or statistics of other names or shapes (named).
        """
        if not isinstance(state, dict) or state.get("version") not in (1, STATE_VERSION):
            raise ValueError(f"state: an EM state dict of version {STATE_VERSION} expected")
        if state["version"] == 1 and isinstance(state.get("statistics"), dict):
            state = {**state, "statistics": {_VERSION_1_NAMES.get(name, name): value
                                             for name, value in state["statistics"].items()}}
        if state.get("options") != asdict(self.options):
            raise ValueError(f"state['options']: saved with {state.get('options')!r}, this EM has "
                             f"{asdict(self.options)!r}")
        num_steps = checks.integer("state['num_steps']", state.get("num_steps"), minimum=0)
        statistics = state.get("statistics")
        if not isinstance(statistics, dict) or (num_steps > 0) != bool(statistics):
            raise ValueError("state['statistics']: a dict of tensors, empty exactly when num_steps is 0, expected")
        if statistics:
            self._check_statistics(statistics)
        device = self.spn.root.logits.device
        self.statistics = {name: value.to(device=device, dtype=torch.float64) for name, value in statistics.items()}
        self.num_steps = num_steps

    def _check_statistics(self, statistics: dict[str, Any]) -> None:
        """``ValueError`` unless ``statistics`` has the names and shapes of this circuit's statistics."""
        expected = self._statistic_shapes()
        if set(statistics) != set(expected):
            raise ValueError(f"state['statistics']: expected the entries {sorted(expected)}, got {sorted(statistics)}")
        for name, shape in expected.items():
            value = statistics[name]
            if not isinstance(value, Tensor) or tuple(value.shape) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"state['statistics'][{name!r}]: expected shape {shape}, got {got}")

    def _statistic_shapes(self) -> dict[str, tuple[int, ...]]:
        """The name and shape of every statistic of this circuit."""
        spn = self.spn
        shapes: dict[str, tuple[int, ...]] = {"root": (spn.num_repetitions,)}
        for k, layer in enumerate(spn.einsum_layers):
            units = (layer.num_repetitions, layer.num_regions, layer.num_outputs)
            shapes[f"flow{k}"] = units
            shapes[f"einsum{k}"] = (*units, layer.num_inputs**2)
        components = (spn.num_channels, spn.num_features, spn.num_leaves, spn.num_repetitions)
        shapes["leaf_count"] = components
        shapes["leaf_sum"] = (*components, spn.leaf.num_statistics)
        return shapes


__all__ = ["EM", "LOG_FLOOR", "MAX_LOGIT", "EMOptions", "Reduce", "expected_counts"]
