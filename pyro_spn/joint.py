"""Joint circuits: one circuit over the data and extra variables (Gaussian latents, a class label), and the data's
marginal as a distribution with encoders and decoders.

:class:`JointSPN` holds a :class:`~pyro_spn.RatSPN` over the flat joint ``(x, e)``: the ``F = prod(data_event_shape)``
data variables first (leaf ``data_leaf``), then the ``E`` extra variables (leaf ``extra_leaf``). Exact inference
then gives everything a latent-variable or labelled model needs, from the one circuit:

* ``log p(x)`` (the extras marginalized) and ``log p(x, e)``, each in one upward pass;
* exact and differentiable draws of ``x`` given ``e`` (a decoder, a class-conditional generator);
* the max-product completion of ``e`` given ``x`` (an encoder), and ``p(e | x)`` for a label (a classifier).

:class:`MarginalSPNDistribution` is the distribution of ``x`` under such a circuit, a Pyro distribution whose
:attr:`~MarginalSPNDistribution.joint` is the :class:`~pyro_spn.SPNDistribution` over ``(x, e)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from . import checks
from .distribution import SPNDistribution
from .expectations import Statistic, expected_statistics
from .leaves import Categorical, Leaf, Mixed
from .sampling import Interpolation
from .spn import RatSPN


class JointSPN(nn.Module):
    """A circuit over the data ``x`` (shape ``data_event_shape``) and ``num_extra`` extra variables ``e``.

    Data ``x`` are ``[N, *data_event_shape]`` in the data leaf's support (NaN marks a missing entry); extras ``e``
    are ``[N, num_extra]`` in the extra leaf's support.

    Args:
        data_event_shape: the data's shape, ``F``, ``(F,)`` or ``(C, H, W)`` (flattened in the joint).
        data_leaf: the leaf family of the data, e.g. ``Binomial(total_count=255)``.
        extra_leaf: the leaf family of the extras, e.g. ``Normal()`` (latents) or ``Categorical(10)`` (a label).
        num_extra: ``E >= 1``.
        depth, num_repetitions, num_sums, num_leaves, seed: the circuit's structure (:class:`~pyro_spn.RatSPN`).

    Attributes:
        spn: the :class:`~pyro_spn.RatSPN` over the joint, event shape ``(F + E,)``.
    """

    def __init__(self, data_event_shape: int | Sequence[int], data_leaf: Leaf, extra_leaf: Leaf, num_extra: int, *,
                 depth: int, num_repetitions: int, num_sums: int, num_leaves: int, seed: int = 0) -> None:
        super().__init__()
        self.data_event_shape = checks.event_shape(data_event_shape, "data_event_shape")
        self.num_data = math.prod(self.data_event_shape)
        self.num_extra = checks.integer("num_extra", num_extra)
        leaf = self.joint_leaf(self.data_event_shape, data_leaf, extra_leaf, self.num_extra)
        self.spn = RatSPN((self.num_data + self.num_extra,), depth=depth, num_repetitions=num_repetitions,
                          num_sums=num_sums, num_leaves=num_leaves, leaf=leaf, seed=seed)

    @staticmethod
    def joint_leaf(data_event_shape: int | Sequence[int], data_leaf: Leaf, extra_leaf: Leaf, num_extra: int) -> Mixed:
        """The joint circuit's leaf: ``data_leaf`` over the flattened data, then ``extra_leaf`` over the extras."""
        for name, leaf in (("data_leaf", data_leaf), ("extra_leaf", extra_leaf)):
            if not isinstance(leaf, Leaf) or isinstance(leaf, Mixed):
                raise TypeError(f"{name} must be a pyro_spn.leaves spec (not Mixed), got {leaf!r}")
        num_data = math.prod(checks.event_shape(data_event_shape, "data_event_shape"))
        return Mixed(((data_leaf, num_data), (extra_leaf, checks.integer("num_extra", num_extra))))

    @property
    def data_leaf(self) -> Leaf:
        return self._leaf.groups[0][0]

    @property
    def extra_leaf(self) -> Leaf:
        return self._leaf.groups[1][0]

    @property
    def _leaf(self) -> Mixed:
        assert isinstance(self.spn.leaf, Mixed)
        return self.spn.leaf

    # -- the joint layout ---------------------------------------------------------------------------------
    def join(self, x: Tensor | None, extra: Tensor | None, x_name: str = "x", extra_name: str = "extra") -> Tensor:
        """The joint ``[N, F + E]`` (the circuit's dtype and device) of ``x [N, *data_event_shape]`` and
        ``extra [N, E]``; a part given as ``None`` is missing (NaN). At least one part must be given; the names
        ``x_name`` / ``extra_name`` appear in the errors."""
        if x is None and extra is None:
            raise ValueError(f"at least one of {x_name} and {extra_name} must be given")
        reference = self.spn.root.logits
        parts = []
        for name, value, shape, leaf in ((x_name, x, self.data_event_shape, self.data_leaf),
                                          (extra_name, extra, (self.num_extra,), self.extra_leaf)):
            if value is None:
                continue
            if not isinstance(value, Tensor) or value.dim() != 1 + len(shape) or tuple(value.shape[1:]) != shape:
                got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise ValueError(f"{name}: expected a tensor of shape [N, {', '.join(map(str, shape))}], got {got}")
            if value.is_complex():
                raise TypeError(f"{name}: expected real values, got {value.dtype}")
            flat = value.to(reference).reshape(value.shape[0], -1)
            if not bool(leaf.support.check(torch.where(torch.isnan(flat), torch.zeros_like(flat), flat)).all()):
                raise ValueError(f"{name}: entries outside the support {leaf.support} (NaN marks a missing entry)")
            parts.append((name, flat))
        if len(parts) == 2 and parts[0][1].shape[0] != parts[1][1].shape[0]:
            raise ValueError(f"{x_name} and {extra_name} must have the same N, got {parts[0][1].shape[0]} and "
                             f"{parts[1][1].shape[0]}")
        num = parts[0][1].shape[0]
        nan = reference.new_full((num, 1), math.nan)
        x_flat = dict(parts).get(x_name, nan.expand(-1, self.num_data))
        extra_flat = dict(parts).get(extra_name, nan.expand(-1, self.num_extra))
        return torch.cat([x_flat, extra_flat], dim=1)

    def split(self, joint: Tensor) -> tuple[Tensor, Tensor]:
        """``[*B, F + E]`` → ``(x [*B, *data_event_shape], extra [*B, E])``."""
        batch = joint.shape[:-1]
        return joint[..., : self.num_data].reshape(batch + self.data_event_shape), joint[..., self.num_data:]

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        """``log p(x, extra)`` ``[N]``, or ``log p(x)`` (the extras marginalized) without ``extra``."""
        return self.spn(self.join(x, extra))

    def distribution(self, *, temperature: Tensor | float = 1.0, hard: bool = True,
                     interpolation: Interpolation = "unit") -> MarginalSPNDistribution:
        """The data's marginal with this sampling rule (see :class:`~pyro_spn.SPNDistribution`)."""
        return MarginalSPNDistribution(self, temperature=temperature, hard=hard, interpolation=interpolation)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              *args: Any) -> None:
        # pyro_spn 0.1 saved the bare circuit over the joint (PAE runs): its entries now live under ``spn.``
        if not any(key.startswith(f"{prefix}spn.") for key in state_dict):
            for key in [k for k in state_dict if k.startswith(prefix)]:
                state_dict[f"{prefix}spn.{key[len(prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)


class MarginalSPNDistribution(TorchDistribution):
    """The distribution of the data ``x`` under a :class:`JointSPN`, the extras marginalized, with the joint's
    encoder (:meth:`encode`), decoder (:meth:`decode`) and conditional samplers.

    ``log_prob`` is exact (NaN entries of ``x`` are marginalized too), ``sample`` exact, ``rsample`` the joint's
    differentiable sampler restricted to the data. ``batch_shape`` is ``()``.

    Args:
        joint: the circuit.
        temperature, hard, interpolation: the sampling rule (see :class:`~pyro_spn.SPNDistribution`).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, joint: JointSPN, *, temperature: Tensor | float = 1.0, hard: bool = True,
                 interpolation: Interpolation = "unit", validate_args: bool | None = None) -> None:
        if not isinstance(joint, JointSPN):
            raise TypeError(f"joint must be a pyro_spn.joint.JointSPN, got {type(joint).__name__}")
        self.circuit = joint
        #: The :class:`~pyro_spn.SPNDistribution` over the joint ``(x, e)``, event shape ``(F + E,)``.
        self.joint = SPNDistribution(joint.spn, temperature=temperature, hard=hard, interpolation=interpolation,
                                     validate_args=validate_args)
        super().__init__(torch.Size(), torch.Size(joint.data_event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(self.circuit.data_leaf.support, len(self.event_shape))

    def _check_data(self, x: Tensor, name: str = "x") -> Tensor:
        """``x [N, *event_shape]`` as data rows; raises ``ValueError`` naming ``name`` otherwise."""
        if not isinstance(x, Tensor) or x.dim() != 1 + len(self.event_shape) or x.shape[1:] != self.event_shape:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected shape [N, {', '.join(map(str, self.event_shape))}], got {got}")
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        """``log p(x)`` ``[N]`` of ``value [N, *event_shape]`` (NaN entries marginalized)."""
        return self.joint.log_prob(self.circuit.join(self._check_data(value, "value"), None, x_name="value"))

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Exact draws ``[*sample_shape, *event_shape]`` of the data, no gradient."""
        return self.circuit.split(self.joint.sample(sample_shape))[0]

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        """Differentiable draws ``[*sample_shape, *event_shape]`` of the data (the joint's rule)."""
        return self.circuit.split(self.joint.rsample(sample_shape))[0]

    # -- encoders and decoders --------------------------------------------------------------------------
    def encode(self, x: Tensor) -> Tensor:
        """The extras' max-product completion given ``x``: ``[N, *event_shape]`` → ``[N, E]`` (differentiable
        w.r.t. the selected leaves' parameters, e.g. the Gaussian latents' locations)."""
        return self.circuit.split(self.joint.mpe(self.circuit.join(self._check_data(x), None)))[1]

    def decode(self, extra: Tensor) -> Tensor:
        """A differentiable draw of ``x`` given ``extra [N, E]`` (the joint's rule), ``[N, *event_shape]``."""
        return self.circuit.split(self.joint.condition(self.circuit.join(None, extra)).rsample())[0]

    def decode_log_prob(self, x: Tensor, extra: Tensor) -> Tensor:
        """``log p(x | extra)`` ``[N]`` for ``x [N, *event_shape]`` and ``extra [N, E]``, exact and differentiable
        w.r.t. the circuit's parameters and ``extra`` (the decoder's density, for score-function gradients)."""
        joint = self.joint.log_prob(self.circuit.join(self._check_data(x), extra))
        return joint - self.joint.log_prob(self.circuit.join(None, extra))

    def expected_given(self, extra: Tensor, statistic: Statistic) -> Tensor:
        """``E[h_k(x_d) | extra]`` for every data entry, ``[N, *event_shape, K]``, exact and differentiable (the
        decoder's expected statistics, e.g. :func:`~pyro_spn.expectations.moments`; see
        :func:`~pyro_spn.expectations.expected_statistics`)."""
        data = slice(0, self.circuit.num_data)
        stats = expected_statistics(self.circuit.spn, self.circuit.join(None, extra), statistic, data)  # [N, 1, F, K]
        return stats.reshape((extra.shape[0],) + tuple(self.event_shape) + (stats.shape[-1],))

    def sample_given(self, extra: Tensor) -> Tensor:
        """Exact draws of ``x`` given ``extra [N, E]``, ``[N, *event_shape]``, no gradient."""
        return self.circuit.split(self.joint.condition(self.circuit.join(None, extra)).sample())[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """An exact draw of ``x`` given its encoding, ``[N, *event_shape]`` (what the auto-encoding loss scores)."""
        return self.sample_given(self.encode(x))

    def classify(self, x: Tensor) -> Tensor:
        """``log p(e | x)`` ``[N, V]`` of a single categorical extra (a label with ``V`` classes) by exact inference
        (rows log-normalized); NaN entries of ``x`` are marginalized, so partial data are classified too."""
        leaf = self.circuit.extra_leaf
        if not isinstance(leaf, Categorical) or self.circuit.num_extra != 1:
            raise ValueError(f"classify needs one Categorical extra variable, the circuit has {self.circuit.num_extra} "
                             f"of {leaf!r}")
        joint = self.circuit.join(self._check_data(x), None)
        num, classes = joint.shape[0], leaf.num_categories
        every = joint.repeat_interleave(classes, dim=0)  # [N·V, F + 1], row n·V + v has class v
        every[:, -1] = torch.arange(classes, dtype=every.dtype, device=every.device).repeat(num)
        return self.circuit.spn(every).reshape(num, classes).log_softmax(dim=1)
