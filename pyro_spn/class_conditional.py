"""Class-conditional circuits: one circuit over the joint of the data and a class variable.

The circuit of :func:`build_class_conditional_spn` models the flat joint ``(x, y)``: the ``F`` flattened data
variables with the data leaf and the class ``y`` (the last variable) with a ``Categorical(num_classes)`` leaf.
Exact inference then gives everything a labelled generator needs:

* ``log p(x, y)`` and ``log p(x)`` (the class marginalized) in one upward pass;
* ``log p(y | x)``, a generative classifier, from ``num_classes`` upward passes;
* exact draws of ``x | y`` (the class observed, the data missing: :meth:`pyro_spn.SPNDistribution.condition`)
  and their differentiable (straight-through or relaxed) counterparts.

:class:`ClassConditionalSPN` wraps such a circuit; :func:`fit_class_conditional` trains it by maximum likelihood.
Its samples feed :func:`pyro_spn.metrics.classifier_on_samples`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from .distribution import SPNDistribution
from .leaves import Categorical, Leaf, Mixed
from .nets._checks import event_shape_of, positive_int
from .spn import Interpolation, RatSPN

__all__ = ["ClassConditionalSPN", "build_class_conditional_spn", "fit_class_conditional"]


def _num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    return num_classes


def build_class_conditional_spn(data_event_shape: int | Sequence[int], num_classes: int, data_leaf: Leaf, *,
                                depth: int, num_repetitions: int, num_sums: int, num_leaves: int,
                                seed: int = 0) -> RatSPN:
    """A circuit over the flat joint ``(x, y)``, event shape ``(F + 1,)`` with ``F = prod(data_event_shape)``:
    ``data_leaf`` over the first ``F`` variables (the flattened data), ``Categorical(num_classes)`` over the last
    (the class). The other arguments are :class:`pyro_spn.RatSPN`'s."""
    num_data = math.prod(event_shape_of(data_event_shape))
    if not isinstance(data_leaf, Leaf):
        raise TypeError(f"data_leaf must be a pyro_spn.leaves leaf (Normal, Binomial, Bernoulli, Categorical), "
                        f"got {data_leaf!r}")
    leaf = Mixed([(data_leaf, num_data), (Categorical(_num_classes(num_classes)), 1)])
    return RatSPN((num_data + 1,), depth=depth, num_repetitions=num_repetitions, num_sums=num_sums,
                  num_leaves=num_leaves, leaf=leaf, seed=seed)


class ClassConditionalSPN(nn.Module):
    """A class-conditional generator and generative classifier: a circuit over ``(x, y)``.

    Data ``x`` are ``[N, *data_event_shape]`` in the data leaf's support (model space, e.g. counts ``0..16`` for
    ``Binomial(total_count=16)``), NaN marking a missing entry; labels ``y`` are ``[N]`` integer tensors with
    values in ``0..num_classes-1``.

    Args:
        data_event_shape: the data's shape, ``F``, ``(F,)`` or ``(C, H, W)``.
        num_classes: ``V >= 2``.
        data_leaf: a fresh leaf for the data variables, e.g. ``Binomial(total_count=16)``.
        depth, num_repetitions, num_sums, num_leaves, seed: the circuit's structure, see
            :func:`build_class_conditional_spn`.

    Attributes:
        spn: the :class:`pyro_spn.RatSPN` over the joint, event shape ``(F + 1,)``.
    """

    def __init__(self, data_event_shape: int | Sequence[int], num_classes: int, data_leaf: Leaf, *, depth: int,
                 num_repetitions: int, num_sums: int, num_leaves: int, seed: int = 0) -> None:
        super().__init__()
        self.data_event_shape = event_shape_of(data_event_shape)
        self.num_classes = _num_classes(num_classes)
        self.num_data = math.prod(self.data_event_shape)
        self.spn = build_class_conditional_spn(self.data_event_shape, num_classes, data_leaf, depth=depth,
                                               num_repetitions=num_repetitions, num_sums=num_sums,
                                               num_leaves=num_leaves, seed=seed)

    # -- the joint layout -----------------------------------------------------------------------------
    def join(self, x: Tensor | None, y: Tensor | None, x_name: str = "x", y_name: str = "y") -> Tensor:
        """The joint ``[N, F + 1]`` (the circuit's dtype and device) of ``x [N, *data_event_shape]`` and
        ``y [N]``; a part given as ``None`` is missing (NaN). At least one part must be given; the argument
        names ``x_name`` / ``y_name`` appear in the errors."""
        if x is None and y is None:
            raise ValueError(f"at least one of {x_name} and {y_name} must be given")
        reference = self.spn.root.logits
        if x is not None:
            if not isinstance(x, Tensor) or tuple(x.shape[1:]) != self.data_event_shape:
                shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
                raise ValueError(f"{x_name}: expected a tensor of shape "
                                 f"[N, {', '.join(map(str, self.data_event_shape))}], got {shape}")
            x = x.to(reference).reshape(x.shape[0], self.num_data)
            support = self.spn.leaf.groups[0].support
            if not bool(support.check(torch.where(torch.isnan(x), torch.zeros_like(x), x)).all()):
                raise ValueError(f"{x_name}: entries outside the data leaf's support {support} "
                                 "(NaN marks a missing entry)")
        if y is not None:
            if (not isinstance(y, Tensor) or y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool
                    or y.is_complex()):
                shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
                raise ValueError(f"{y_name}: expected an integer tensor of shape [N], got {shape}")
            if bool(((y < 0) | (y >= self.num_classes)).any()):
                raise ValueError(f"{y_name}: class labels must be in 0..{self.num_classes - 1}")
            if x is not None and len(y) != len(x):
                raise ValueError(f"{x_name} and {y_name} must have the same N, got {len(x)} and {len(y)}")
            y = y.to(reference)[:, None]
        num = len(x) if x is not None else len(y)
        nan = reference.new_full((num, 1), math.nan)
        x = nan.expand(-1, self.num_data) if x is None else x
        y = nan if y is None else y
        return torch.cat([x, y], dim=1)

    def split(self, joint: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, F + 1]`` → ``(x [N, *data_event_shape], y [N])`` with ``y`` as long."""
        x = joint[:, : self.num_data].reshape((-1,) + self.data_event_shape)
        return x, joint[:, self.num_data].round().long()

    def distribution(self, temperature: Tensor | float = 1.0, hard: bool = True,
                     interpolation: Interpolation = "unit") -> SPNDistribution:
        """The joint as an :class:`pyro_spn.SPNDistribution` over ``[N, F + 1]`` with this sampling rule."""
        return SPNDistribution(self.spn, temperature=temperature, hard=hard, interpolation=interpolation)

    # -- inference -------------------------------------------------------------------------------------
    def log_prob(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)`` ``[N]`` (NaN entries of ``x`` marginalized)."""
        return self.spn(self.join(x, y))

    def log_prob_x(self, x: Tensor) -> Tensor:
        """``log p(x) = log Σ_y p(x, y)`` ``[N]``, the class marginalized in the same upward pass."""
        return self.spn(self.join(x, None))

    def classify(self, x: Tensor) -> Tensor:
        """Class posterior ``log p(y | x)`` ``[N, num_classes]`` by exact inference (rows log-normalized);
        NaN entries of ``x`` are marginalized, so partially observed data are classified too."""
        joint = self.join(x, None)
        num, classes = len(joint), self.num_classes
        every = joint.repeat_interleave(classes, dim=0)  # [N·V, F + 1], row n·V + v has class v
        every[:, -1] = torch.arange(classes, dtype=every.dtype, device=every.device).repeat(num)
        return self.spn(every).reshape(num, classes).log_softmax(dim=1)

    # -- sampling --------------------------------------------------------------------------------------
    def sample(self, labels: Tensor) -> Tensor:
        """Exact draws ``x ~ p(x | y = labels)``, ``[N, *data_event_shape]`` for ``labels [N]``, no gradient."""
        joint = self.distribution().condition(self.join(None, labels, y_name="labels")).sample()
        return self.split(joint)[0]

    def rsample(self, labels: Tensor, temperature: Tensor | float = 1.0, hard: bool = True,
                interpolation: Interpolation = "unit") -> Tensor:
        """Differentiable draws of ``x | y = labels``, ``[N, *data_event_shape]``: exact values with
        straight-through gradients for ``hard=True``, relaxed draws for ``hard=False`` (see
        :class:`pyro_spn.SPNDistribution`)."""
        evidence = self.join(None, labels, y_name="labels")
        joint = self.distribution(temperature, hard, interpolation).condition(evidence).rsample()
        return self.split(joint)[0]

    def sample_joint(self, num_samples: int) -> tuple[Tensor, Tensor]:
        """``num_samples`` exact draws of ``(x, y)``: ``(x [n, *data_event_shape], y [n] long)``."""
        return self.split(self.distribution().sample((positive_int("num_samples", num_samples),)))


def fit_class_conditional(model: ClassConditionalSPN, images: Tensor, labels: Tensor, *, epochs: int = 10,
                          lr: float = 0.05, batch_size: int = 128, seed: int = 0,
                          progress: bool = False) -> list[float]:
    """Maximum likelihood of the joint ``p(x, y)`` by Adam, on the model's device.

    Args:
        model: the circuit to train (in place).
        images: ``[N, *data_event_shape]`` in the data leaf's support (model space); NaN entries are missing.
        labels: ``[N]`` integer class labels in ``0..num_classes-1``.
        epochs: passes over the data.
        lr: Adam's learning rate.
        batch_size: examples per step.
        seed: seeds the shuffling (the global RNG is untouched); training is deterministic given it.
        progress: show a tqdm bar over the epochs.

    Returns:
        The mean negative log-likelihood ``−log p(x, y)`` (nats per example) of every epoch, during that epoch.
    """
    if not isinstance(model, ClassConditionalSPN):
        raise TypeError(f"model must be a ClassConditionalSPN, got {type(model).__name__}")
    epochs, batch_size = positive_int("epochs", epochs), positive_int("batch_size", batch_size)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    joint = model.join(images, labels, x_name="images", y_name="labels")  # [N, F + 1], validated once
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    history = []
    bar = tqdm(range(epochs), desc="class-conditional SPN", unit="epoch", disable=not progress)
    for _ in bar:
        total = joint.new_zeros(())
        for index in torch.randperm(len(joint), generator=generator).split(batch_size):
            nll = -model.spn(joint[index.to(joint.device)])
            loss = nll.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += nll.detach().sum()
        history.append(float(total) / len(joint))
        bar.set_postfix(nll=f"{history[-1]:.4g}")
    return history
