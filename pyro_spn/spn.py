"""``RatSPN``: a tensorized random-binary-tree sum-product network (an ``nn.Module``): structure, parameters and
the upward pass.

Structure (``D`` depth, ``R`` repetitions, ``K`` = ``num_sums``, ``I`` = ``num_leaves``)::

    leaves [N, C, F] → leaf regions [N, R, 2^D, I]
      → einsum layers [N, R, 2^(D-1), K] → … → [N, R, 1, 1] → repetition mixing → root [N]

The circuit knows nothing of Pyro (:class:`pyro_spn.SPNDistribution` adapts it) nor of sampling
(:mod:`pyro_spn.sampling` runs its top-down pass).

Data ``x`` has shape ``[N, *event_shape]``; ``event_shape`` is ``(F,)``, ``(H, W)`` (one channel) or
``(C, H, W)`` (``F = H·W`` variables with ``C`` channels each; a leaf factorizes over channels).
NaN entries of ``x`` are missing: they are marginalized (``log_likelihood``), sampled (sampling with
evidence) or maximized (max-product).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from . import checks
from .layers import EinsumLayer, LeafLayer, RepetitionMixing
from .leaves import LEAVES, Leaf, Mixed
from .structure import RandomBinaryTrees, random_binary_trees

#: The largest number of parameters a circuit may have (about 4 GiB of float32 weights).
MAX_PARAMETERS = 2**30


@dataclass(frozen=True)
class FlatSlice:
    """Where one parameter tensor lives in the circuit's flat parameter vector (:attr:`RatSPN.flat_parameter_layout`).

    Attributes:
        name: the parameter's name in :meth:`~torch.nn.Module.named_parameters` (``"leaf_layer.loc"``,
            ``"inner_layers.0.logits"``, ``"root.logits"``).
        shape: the parameter's shape.
        offset: its first entry in the flat vector; it occupies ``offset : offset + prod(shape)``, row-major.
    """

    name: str
    shape: torch.Size
    offset: int

    @property
    def size(self) -> int:
        """The number of entries, ``prod(shape)``."""
        return math.prod(self.shape)


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


class RatSPN(nn.Module):
    """A RAT-SPN over data of shape ``event_shape``.

    Args:
        event_shape: ``F``, ``(F,)``, ``(H, W)`` or ``(C, H, W)``.
        depth: ``D >= 1``; ``2**D`` leaf regions per repetition.
        num_repetitions: ``R >= 1`` random trees, mixed at the root.
        num_sums: ``K``, sum units per inner region.
        num_leaves: ``I``, leaf components per leaf region.
        leaf: the leaf family, a spec such as ``Binomial(total_count=255)`` (reusable: the circuit creates and owns
            the parameters, in :attr:`leaf_layer`).
        seed: seeds the region graph and the parameter initialization.
        structure: the region graph; ``None`` (the default) draws ``num_repetitions`` random binary trees of depth
            ``depth`` (RAT-SPN). A given structure fixes the depth and the repetitions (``depth`` and
            ``num_repetitions`` may then be omitted, or must agree with it).

    Raises:
        TypeError, ValueError: bad arguments (named), or a circuit of more than :data:`MAX_PARAMETERS` parameters.
    """

    #: The layout of :meth:`state_dict`: 2 since the leaf parameters live in ``leaf_layer`` (version 1 state dicts,
    #: whose leaf parameters lived in ``leaf``, still load).
    _version = 2

    def __init__(self, event_shape: int | Sequence[int], *, depth: int | None = None,
                 num_repetitions: int | None = None, num_sums: int, num_leaves: int, leaf: Leaf, seed: int = 0,
                 structure: RandomBinaryTrees | None = None) -> None:
        super().__init__()
        self.event_shape = checks.event_shape(event_shape)
        if not isinstance(leaf, Leaf):
            families = ", ".join(cls.__name__ for cls in LEAVES.values())
            raise TypeError(f"leaf must be a pyro_spn.leaves spec ({families}), got {leaf!r}")
        self.leaf = leaf
        depth, num_repetitions = _structure_sizes(structure, depth, num_repetitions)
        self.depth = checks.integer("depth", depth, maximum=30)
        self.num_repetitions = checks.integer("num_repetitions", num_repetitions)
        self.num_sums = checks.integer("num_sums", num_sums)
        self.num_leaves = checks.integer("num_leaves", num_leaves)
        self.seed = checks.integer("seed", seed, minimum=0, maximum=2**63 - 1)
        self.num_channels = self.event_shape[0] if len(self.event_shape) == 3 else 1
        self.num_features = math.prod(self.event_shape) // self.num_channels
        count = self.num_parameters(self.event_shape, depth=depth, num_repetitions=num_repetitions,
                                    num_sums=num_sums, num_leaves=num_leaves, leaf=leaf)
        if count > MAX_PARAMETERS:
            raise ValueError(f"event_shape, depth, num_repetitions, num_sums, num_leaves, leaf: this circuit would "
                             f"have {count:.3g} parameters, more than the {MAX_PARAMETERS:.3g} allowed")

        if structure is None:
            structure = random_binary_trees(self.num_features, depth, num_repetitions, self.seed)
        elif structure.num_features != self.num_features:
            raise ValueError(f"structure: a region graph over {structure.num_features} variables, but event_shape "
                             f"{self.event_shape} has {self.num_features}")
        trees = structure
        generator = torch.Generator().manual_seed(self.seed)
        self.leaf_layer = LeafLayer(leaf, self.num_channels, trees, num_leaves, generator)
        self.inner_layers = nn.ModuleList(
            EinsumLayer(num_regions, num_inputs, num_outputs, num_repetitions, generator)
            for num_regions, num_inputs, num_outputs in _einsum_shapes(depth, num_sums, num_leaves)
        )
        self.root = RepetitionMixing(num_repetitions)

    @staticmethod
    def num_parameters(event_shape: int | Sequence[int], *, depth: int, num_repetitions: int, num_sums: int,
                       num_leaves: int, leaf: Leaf) -> int:
        """The number of parameters of the circuit these arguments describe, by arithmetic (nothing is built)."""
        shape = checks.event_shape(event_shape)
        num_channels = shape[0] if len(shape) == 3 else 1
        num_features = math.prod(shape) // num_channels
        leaves = leaf.num_parameters(num_channels, num_features, num_leaves, num_repetitions)
        inner = sum(num_repetitions * regions * outputs * inputs * inputs
                    for regions, inputs, outputs in _einsum_shapes(depth, num_sums, num_leaves))
        return leaves + inner + num_repetitions

    # -- the flat parameter vector (amortized circuits) --------------------------------------------------------
    @property
    def flat_parameter_layout(self) -> list[FlatSlice]:
        """The map between a flat parameter vector ``[P]`` and the circuit's parameter tensors: every parameter of
        :meth:`~torch.nn.Module.named_parameters`, in that order, unconstrained (leaf parameters before their
        constraint, sum weights as logits before the softmax), each flattened row-major."""
        layout, offset = [], 0
        for name, parameter in self.named_parameters():
            layout.append(FlatSlice(name, parameter.shape, offset))
            offset += parameter.numel()
        return layout

    @property
    def flat_parameter_size(self) -> int:
        """``P``, the length of the flat parameter vector (:attr:`num_parameters` of this circuit)."""
        return sum(parameter.numel() for parameter in self.parameters())

    def flatten_parameters(self) -> Tensor:
        """The circuit's own parameters as one flat vector ``[P]`` (differentiable; e.g. to initialize the bias of the
        network that produces amortized parameters)."""
        return torch.cat([parameter.reshape(-1) for parameter in self.parameters()])

    def unflatten_parameters(self, flat: Tensor) -> dict[str, Tensor]:
        """The parameter tensors of flat vectors ``flat [*B, P]``: ``name → [*B, *shape]`` (views, no copy)."""
        checks.real_tensor("flat", flat)
        if flat.dim() < 1 or flat.shape[-1] != self.flat_parameter_size:
            raise ValueError(f"flat: expected shape [..., {self.flat_parameter_size}] (the circuit's "
                             f"flat_parameter_size), got {tuple(flat.shape)}")
        batch, layout = flat.shape[:-1], self.flat_parameter_layout
        pieces = flat.split([part.size for part in layout], dim=-1)  # one concatenation backward, no zero fills
        return {part.name: piece.reshape(batch + part.shape) for part, piece in zip(layout, pieces, strict=True)}

    @property
    def einsum_layers(self) -> list[EinsumLayer]:
        """The einsum layers, bottom to top."""
        return [cast(EinsumLayer, layer) for layer in self.inner_layers]

    # -- shapes -------------------------------------------------------------------------------------------
    def flatten_data(self, x: Tensor) -> Tensor:
        """``[N, *event_shape]`` → ``[N, C, F]`` (cast to the parameters' dtype)."""
        checks.real_tensor("x", x)
        if x.dim() != 1 + len(self.event_shape) or tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(f"x: expected shape [N, {', '.join(map(str, self.event_shape))}], got {tuple(x.shape)}")
        return x.to(self.root.logits.dtype).reshape(x.shape[0], self.num_channels, self.num_features)

    def unflatten_data(self, x: Tensor) -> Tensor:
        """``[N, C, F]`` → ``[N, *event_shape]``."""
        return x.reshape((x.shape[0],) + self.event_shape)

    # -- upward pass ----------------------------------------------------------------------------------
    def upward(self, x: Tensor, max_product: bool = False) -> UpwardPass:
        """The upward pass, keeping every layer's input for a top-down pass.

        Args:
            x: ``[N, *event_shape]``, NaN = missing.
            max_product: max-product instead of sum-product.
        """
        ll, base = self.leaf_layer.log_likelihood(self.flatten_data(x), max_product)
        inputs = []
        for layer in self.einsum_layers:
            inputs.append(ll)
            ll = layer.forward_max(ll) if max_product else layer(ll)
        repetitions = ll[:, :, 0, 0]
        root = self.root.forward_max(repetitions) if max_product else self.root(repetitions)
        return UpwardPass(inputs, repetitions, root + base)

    def forward(self, x: Tensor) -> Tensor:
        """Exact log-likelihood ``[N]`` of ``x`` ``[N, *event_shape]``; NaN entries are marginalized."""
        return self.upward(x).log_likelihood

    # -- state dicts of earlier versions ------------------------------------------------------------------
    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              *args: Any) -> None:
        if local_metadata.get("version") is None or local_metadata["version"] < 2:
            _migrate_version_1(state_dict, prefix, isinstance(self.leaf, Mixed))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args)

    def extra_repr(self) -> str:
        return (f"event_shape={self.event_shape}, depth={self.depth}, num_repetitions={self.num_repetitions}, "
                f"num_sums={self.num_sums}, num_leaves={self.num_leaves}, seed={self.seed}")


def _structure_sizes(structure: RandomBinaryTrees | None, depth: int | None,
                     num_repetitions: int | None) -> tuple[int, int]:
    """``(depth, num_repetitions)``: the given ones, or the structure's (``ValueError`` if they disagree or are missing
    without a structure)."""
    if structure is None:
        for name, value in (("depth", depth), ("num_repetitions", num_repetitions)):
            if value is None:
                raise ValueError(f"{name} is required unless a structure is given")
        return cast(int, depth), cast(int, num_repetitions)
    if not isinstance(structure, RandomBinaryTrees):
        raise TypeError(f"structure must be a pyro_spn.structure.RandomBinaryTrees, got {type(structure).__name__}")
    for name, value, own in (("depth", depth, structure.depth),
                             ("num_repetitions", num_repetitions, structure.num_repetitions)):
        if value is not None and value != own:
            raise ValueError(f"{name}={value!r} disagrees with the structure's {name} {own}; omit it")
    return structure.depth, structure.num_repetitions


def _einsum_shapes(depth: int, num_sums: int, num_leaves: int) -> list[tuple[int, int, int]]:
    """``(regions, inputs, outputs)`` of every einsum layer, bottom to top."""
    return [(2 ** (depth - 1 - level), num_leaves if level == 0 else num_sums, 1 if level == depth - 1 else num_sums)
            for level in range(depth)]


def _migrate_version_1(state_dict: dict[str, Any], prefix: str, mixed: bool) -> None:
    """Renames a version 1 state dict's entries in place: the structure's buffers and the leaf parameters moved
    from the circuit and its leaf module into :class:`~pyro_spn.layers.LeafLayer` (``leaf_layer``); a Mixed leaf's
    ``groups.<g>.<name>`` became ``g<g>_<name>`` and its ``feature_type`` buffer is derived from the spec."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        name = key[len(prefix):]
        if name in ("leaf_slots", "variable_region"):
            state_dict[f"{prefix}leaf_layer.{name}"] = state_dict.pop(key)
        elif name.startswith("leaf."):
            value = state_dict.pop(key)
            parts = name.split(".")
            if mixed and len(parts) == 4 and parts[1] == "groups":
                state_dict[f"{prefix}leaf_layer.g{parts[2]}_{parts[3]}"] = value
            elif not (mixed and parts[1] == "feature_type"):
                state_dict[f"{prefix}leaf_layer.{'.'.join(parts[1:])}"] = value
