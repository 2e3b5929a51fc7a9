"""Mixed leaves: different leaf families over consecutive groups of variables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from numbers import Integral
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import constraints

from .base import Leaf, Params


class MixedSupport(constraints.Constraint):
    """Per-variable supports: values ``[..., F]`` (or any shape whose trailing elements come in rows of ``F``
    variables, e.g. ``[..., C, F]``) whose variable ``f`` lies in the support of its group."""

    def __init__(self, sizes: Sequence[int], supports: Sequence[constraints.Constraint]) -> None:
        super().__init__()
        self.sizes = tuple(sizes)
        self.supports = tuple(supports)

    def check(self, value: Tensor) -> Tensor:
        num_features = sum(self.sizes)
        rows = value.reshape(-1, num_features)
        ok = torch.empty_like(rows, dtype=torch.bool)
        start = 0
        for size, support in zip(self.sizes, self.supports, strict=True):
            ok[:, start:start + size] = support.check(rows[:, start:start + size])
            start += size
        return ok.reshape(value.shape)

    def __repr__(self) -> str:
        return f"MixedSupport({', '.join(map(repr, self.supports))})"


@dataclass(frozen=True)
class Mixed(Leaf):
    """Different leaf families over consecutive groups of variables, e.g. Binomial pixels and Gaussian latents.

    ``Mixed([(Binomial(total_count=255), 784), (Normal(), 16)])`` makes variables ``0..783`` Binomial and
    ``784..799`` Gaussian; use it with ``RatSPN((800,), ..., leaf=...)``. The group sizes must add up to the
    circuit's number of variables ``F``; the same spec may appear in several groups.

    Every group has its own parameters over its own variables (named ``g<group>_<name>``). :meth:`constrain`
    widens them to all ``F`` variables and adds a ``"type"`` entry (the group of every variable), which travels
    with the parameters through every gather and expand, so that each operation picks the value of each
    variable's own family.

    Args:
        groups: ``(leaf, number of variables)`` pairs; the leaves may not be :class:`Mixed` themselves.
    """

    groups: tuple[tuple[Leaf, int], ...]
    name: ClassVar[str] = "mixed"

    def __post_init__(self) -> None:
        message = f"groups must be a non-empty list of (leaf, number of variables >= 1) pairs, got {self.groups!r}"
        if isinstance(self.groups, str) or not isinstance(self.groups, Sequence):
            raise TypeError(message)
        groups = tuple(tuple(g) if isinstance(g, list) else g for g in self.groups)
        if not groups:
            raise ValueError(message)
        for group in groups:
            if (not isinstance(group, tuple) or len(group) != 2 or not isinstance(group[0], Leaf)
                    or isinstance(group[1], bool) or not isinstance(group[1], Integral)):
                raise TypeError(message)
            if isinstance(group[0], Mixed):
                raise TypeError(f"groups: a Mixed leaf cannot hold another Mixed leaf, got {group[0]!r}")
            if group[1] < 1:
                raise ValueError(message)
        object.__setattr__(self, "groups", tuple((leaf, int(size)) for leaf, size in groups))

    @property
    def leaves(self) -> tuple[Leaf, ...]:
        return tuple(leaf for leaf, _ in self.groups)

    @property
    def sizes(self) -> tuple[int, ...]:
        return tuple(size for _, size in self.groups)

    @property
    def num_statistics(self) -> int:
        return max(leaf.num_statistics for leaf in self.leaves)

    @property
    def support(self) -> constraints.Constraint:
        return MixedSupport(self.sizes, [leaf.support for leaf in self.leaves])

    # -- parameters -----------------------------------------------------------------------------------
    def _check_features(self, num_features: int) -> None:
        if sum(self.sizes) != num_features:
            raise ValueError(f"leaf: the Mixed group sizes {self.sizes} add up to {sum(self.sizes)}, "
                             f"but the circuit has {num_features} variables")

    def parameter_shapes(self, num_features: int) -> dict[str, tuple[int, tuple[int, ...]]]:
        self._check_features(num_features)
        return {f"g{group}_{name}": shape for group, (leaf, size) in enumerate(self.groups)
                for name, shape in leaf.parameter_shapes(size).items()}

    def init_parameters(self, shape: torch.Size, generator: torch.Generator) -> Params:
        num_channels, num_features, num_components, num_repetitions = shape
        self._check_features(num_features)
        return {f"g{group}_{name}": p for group, (leaf, size) in enumerate(self.groups)
                for name, p in leaf.init_parameters(
                    torch.Size((num_channels, size, num_components, num_repetitions)), generator).items()}

    def feature_type(self, device: torch.device | None = None) -> Tensor:
        """The group of every variable, ``[F]`` (long)."""
        return torch.repeat_interleave(torch.arange(len(self.groups), device=device),
                                       torch.tensor(self.sizes, device=device))

    def constrain(self, raw: Params) -> Params:
        first = next(iter(raw.values()))
        num_channels, _, num_components, num_repetitions = first.shape[:4]
        num_features = sum(self.sizes)
        group_type = self.feature_type(first.device)[None, :, None, None]
        out = {"type": group_type.expand(num_channels, num_features, num_components, num_repetitions)}
        start = 0
        for group, (leaf, size) in enumerate(self.groups):
            own = {name[len(f"g{group}_"):]: p for name, p in raw.items() if name.startswith(f"g{group}_")}
            for name, p in leaf.constrain(own).items():
                out[f"g{group}_{name}"] = _widen(p, start, num_features)
            start += size
        return out

    # -- per-group evaluation -------------------------------------------------------------------------
    @staticmethod
    def _group_params(params: Params, group: int) -> Params:
        prefix = f"g{group}_"
        return {name[len(prefix):]: p for name, p in params.items() if name.startswith(prefix)}

    @staticmethod
    def _pick(group_type: Tensor, values: Sequence[Tensor]) -> Tensor:
        """Per entry, the value of its group: ``values[group_type]`` (broadcast)."""
        out = values[0]
        for group in range(1, len(values)):
            out = torch.where(group_type == group, values[group], out)
        return out

    def _per_group(self, params: Params, fn: Callable[[Leaf, Params, Tensor | None], Tensor],
                   value: Tensor | None = None) -> Tensor:
        """``fn(leaf, group params, safe value)`` per group, each entry picked from its own group's result; other
        groups' entries of ``value`` are replaced by 0, which lies in every leaf's support."""
        group_type = params["type"]
        results = []
        for group, leaf in enumerate(self.leaves):
            safe = None if value is None else torch.where(group_type == group, value, torch.zeros_like(value))
            results.append(fn(leaf, self._group_params(params, group), safe))
        return self._pick(group_type, results)

    def _by_feature(self, x: Tensor, fn: Callable[[Leaf, Tensor], Tensor], trailing: int = 0) -> Tensor:
        """For ``x [*B, F]``: per group ``fn(leaf, safe x)`` (``trailing`` extra dims), picked by each entry's group."""
        types = self.feature_type(x.device)
        results = [fn(leaf, torch.where(types == group, x, torch.zeros_like(x)))
                   for group, leaf in enumerate(self.leaves)]
        return self._pick(types.reshape(types.shape + (1,) * trailing), results)

    def _pad_statistics(self, t: Tensor) -> Tensor:
        return F.pad(t, (0, self.num_statistics - t.shape[-1]))

    def natural_parameters(self, params: Params) -> Tensor:
        etas = [self._pad_statistics(leaf.natural_parameters(self._group_params(params, g)))
                for g, leaf in enumerate(self.leaves)]
        return self._pick(params["type"][..., None], etas)

    def log_normalizer(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.log_normalizer(p))

    def cancellation(self, params: Params) -> Tensor | None:
        """Each group's own (0 for the groups whose family has none); ``None`` if no group's family has one."""
        kappas = [leaf.cancellation(self._group_params(params, g)) for g, leaf in enumerate(self.leaves)]
        known = [kappa for kappa in kappas if kappa is not None]
        if not known:
            return None
        return self._pick(params["type"], [torch.zeros_like(known[0]) if kappa is None else kappa for kappa in kappas])

    def sufficient_statistics(self, x: Tensor) -> Tensor:
        """``T(x)`` for ``x [*B, F]`` (the variables last, as in the circuit's ``[N, C, F]``); ``[*B, F, S]``."""
        return self._by_feature(x, lambda leaf, v: self._pad_statistics(leaf.sufficient_statistics(v)), 1)

    def log_base_measure(self, x: Tensor) -> Tensor:
        """``h(x)`` for ``x [*B, F]``."""
        return self._by_feature(x, lambda leaf, v: leaf.log_base_measure(v))

    def log_prob(self, x: Tensor, params: Params) -> Tensor:
        x = x.expand(torch.broadcast_shapes(x.shape, params["type"].shape))

        def log_prob(leaf: Leaf, group_params: Params, value: Tensor | None) -> Tensor:
            assert value is not None
            return leaf.log_prob(value, group_params)

        return self._per_group(params, log_prob, x)

    def sample(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.sample(p))

    def relaxed(self, params: Params, temperature: Tensor | float, value: Tensor | None = None) -> Tensor:
        return self._per_group(params, lambda leaf, p, v: leaf.relaxed(p, temperature, v), value)

    def mode(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.mode(p))

    def mean(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.mean(p))

    def variance(self, params: Params) -> Tensor:
        return self._per_group(params, lambda leaf, p, _: leaf.variance(p))

    def gaussian_relaxation(self, params: Params) -> tuple[Tensor, Tensor] | None:
        moments = [leaf.gaussian_relaxation(self._group_params(params, g)) for g, leaf in enumerate(self.leaves)]
        if any(m is None for m in moments):
            return None
        pairs = [m for m in moments if m is not None]
        return (self._pick(params["type"], [m[0] for m in pairs]), self._pick(params["type"], [m[1] for m in pairs]))

    # -- EM -------------------------------------------------------------------------------------------
    @property
    def maximizable(self) -> bool:
        """Whether every group's family has an M-step."""
        return all(leaf.maximizable for leaf in self.leaves)

    def maximize(self, count: Tensor, total: Tensor, current: Params, *, prior: float,
                 min_variance: float) -> Params:
        """Each group's own M-step on its variables and first ``S_g`` statistics (the arguments and result of
        :meth:`Leaf.maximize`, with ``total`` padded to the largest ``S`` and ``current`` of ``g<group>_`` names)."""
        out, start = {}, 0
        for group, (leaf, size) in enumerate(self.groups):
            own = leaf.maximize(count[:, start:start + size], total[:, start:start + size, ..., :leaf.num_statistics],
                                self._group_params(current, group), prior=prior, min_variance=min_variance)
            out.update({f"g{group}_{name}": p for name, p in own.items()})
            start += size
        return out

    def to_config(self) -> dict[str, Any]:
        return {"type": self.name, "groups": [[leaf.to_config(), size] for leaf, size in self.groups]}


def _widen(p: Tensor, start: int, num_features: int) -> Tensor:
    """``[C, F_g, I, R, *E]`` → ``[C, F, I, R, *E]``; other groups' variables repeat variable 0 (a valid value)."""
    filler = p[:, :1]
    before = filler.expand((p.shape[0], start) + p.shape[2:])
    after = filler.expand((p.shape[0], num_features - start - p.shape[1]) + p.shape[2:])
    return torch.cat([before, p, after], dim=1)
