"""Shared fixtures: small circuits whose parameters are far from their near-uniform initialization (so that mistakes
show), the enumeration of their states, and one goodness-of-fit test (Pearson's chi², Pyro's
``multinomial_goodness_of_fit``) for sample frequencies against exact probabilities."""

from __future__ import annotations

import itertools
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from pyro.distributions.testing.gof import InvalidTest, multinomial_goodness_of_fit
from scipy.stats import binomtest

from pyro_spn import RatSPN
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Leaf, Mixed

#: Bins of fewer expected counts than this are pooled before the chi² test (its approximation needs them).
MIN_EXPECTED = 5.0


def goodness_of_fit(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """The p-value of ``counts [K]`` (draws per state) under the exact ``probs [K]``.

    States of probability 0 must have no draws (the p-value is 0 otherwise); bins expecting fewer than
    :data:`MIN_EXPECTED` draws are pooled into one. Where one bin holds nearly all the mass (the chi² approximation
    fails), it is an exact binomial test of that bin.
    """
    counts, probs = counts.double().flatten(), probs.double().flatten()
    assert counts.shape == probs.shape, (counts.shape, probs.shape)
    assert abs(float(probs.sum()) - 1) < 1e-6, float(probs.sum())
    if bool((counts[probs <= 0] > 0).any()):
        return 0.0
    counts, probs = counts[probs > 0], probs[probs > 0]
    expected = probs * counts.sum()
    keep = expected >= MIN_EXPECTED
    pooled_counts, pooled_probs = counts[keep], probs[keep]
    if bool((~keep).any()):
        pooled_counts = torch.cat([pooled_counts, counts[~keep].sum()[None]])
        pooled_probs = torch.cat([pooled_probs, probs[~keep].sum()[None]])
    if len(pooled_probs) < 2:
        return 1.0
    try:
        return float(multinomial_goodness_of_fit(pooled_probs, pooled_counts))
    except InvalidTest:  # one bin holds nearly all the mass: an exact binomial test of that bin instead
        top = int(pooled_probs.argmax())
        return float(binomtest(int(pooled_counts[top]), int(pooled_counts.sum()), float(pooled_probs[top])).pvalue)


def support_values(leaf: Leaf) -> list[float]:
    """Every value of a discrete leaf family."""
    if isinstance(leaf, Bernoulli):
        return [0.0, 1.0]
    if isinstance(leaf, Categorical):
        return [float(v) for v in range(leaf.num_categories)]
    if isinstance(leaf, Binomial):
        return [float(v) for v in range(leaf.total_count + 1)]
    if isinstance(leaf, Mixed):
        raise ValueError("a Mixed leaf has a support per group; enumerate its groups")
    raise ValueError(f"{leaf!r} is not discrete")


def all_states(values: Sequence[Sequence[float]]) -> torch.Tensor:
    """Every combination of the entries' ``values`` (entry ``i`` takes ``values[i]``), ``[S, len(values)]`` float64, in
    row-major (odometer) order."""
    return torch.tensor(list(itertools.product(*values)), dtype=torch.float64)


def state_index(x: torch.Tensor, values: Sequence[Sequence[float]]) -> torch.Tensor:
    """The index of every row of ``x [..., E]`` in :func:`all_states` ``(values)``."""
    index = torch.zeros(x.shape[:-1], dtype=torch.long)
    for entry, options in enumerate(values):
        lookup = torch.tensor(options, dtype=x.dtype)
        position = (x[..., entry, None] == lookup).long().argmax(-1)
        index = index * len(options) + position
    return index


def spread_out(spn: RatSPN, seed: int = 0, scale: float = 1.0) -> RatSPN:
    """Adds ``N(0, scale²)`` noise to every parameter (``0.3 · scale`` to the Normal leaves' raw scales), in place."""
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for name, p in spn.named_parameters():
            factor = 0.3 if name.endswith("raw_scale") else 1.0
            p.add_(factor * scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return spn


@pytest.fixture
def make_circuit() -> Callable[..., RatSPN]:
    """A factory of small float64 circuits with spread-out parameters:
    ``make_circuit(leaf, event_shape=3, depth=2, num_repetitions=3, num_sums=3, num_leaves=2, seed=0)``."""

    def make(leaf: Leaf, event_shape: int | Sequence[int] = 3, *, depth: int = 2, num_repetitions: int = 3,
             num_sums: int = 3, num_leaves: int = 2, seed: int = 0) -> RatSPN:
        spn = RatSPN(event_shape, depth=depth, num_repetitions=num_repetitions, num_sums=num_sums,
                     num_leaves=num_leaves, leaf=leaf, seed=seed).double()
        return spread_out(spn, seed)

    return make


@pytest.fixture
def fit() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """:func:`goodness_of_fit`: ``fit(counts, probs)`` is the p-value of the counts under the probabilities."""
    return goodness_of_fit


def shell_commands(block: str, commands: Sequence[str]) -> list[list[str]]:
    """The command lines of a shell ``block`` that run one of ``commands`` (continued lines joined, comments dropped),
    split into words from the command on; also a command started by a launcher (``torchrun ... $(which CMD) ...``)."""
    lines = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        start = next((i for i, word in enumerate(words) if word.rstrip(")") in commands), None)
        if start is not None:
            lines.append([words[start].rstrip(")"), *words[start + 1:]])
    return lines


def copy_run(source: Path, target: Path) -> Path:
    """A copy of the run folder ``source`` (its files) at ``target``."""
    target.mkdir()
    for path in source.iterdir():
        (target / path.name).write_bytes(path.read_bytes())
    return target
