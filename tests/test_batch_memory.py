"""Any batch size: the batched entry points run in row chunks within a memory budget (``pyro_spn.batching``)."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from typing import cast

import pytest
import torch
from torch import Tensor

from pyro_spn import RatSPN, SPNDistribution, batching
from pyro_spn.leaves import Binomial
from pyro_spn.sampling import sampler

NAN = float("nan")


@pytest.fixture
def spn() -> RatSPN:
    return RatSPN(8, depth=2, num_repetitions=3, num_sums=4, num_leaves=3, leaf=Binomial(total_count=4),
                  seed=1).double()


@pytest.fixture(autouse=True)
def default_budget(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(batching.ENVIRONMENT_VARIABLE, raising=False)
    batching.set_memory_budget(None)
    yield
    batching.set_memory_budget(None)


def _grads(module: torch.nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in module.parameters() if p.grad is not None]


def _evidence(d: SPNDistribution, n: int) -> Tensor:
    x = d.sample((n,))
    x[: n // 2, :4] = NAN
    x[n // 2:, 2:7] = NAN
    return x


# -- the budget ------------------------------------------------------------------------------------------------
def test_budget_default_environment_setter_and_context(monkeypatch: pytest.MonkeyPatch) -> None:
    assert batching.get_memory_budget() == batching.DEFAULT_MEMORY_BUDGET == 2**30
    monkeypatch.setenv(batching.ENVIRONMENT_VARIABLE, "512M")
    assert batching.get_memory_budget() == 512 * 2**20
    batching.set_memory_budget(12345)
    assert batching.get_memory_budget() == 12345
    with batching.memory_budget(77) as budget:
        assert budget == 77 == batching.get_memory_budget()
    assert batching.get_memory_budget() == 12345
    batching.set_memory_budget(None)
    assert batching.get_memory_budget() == 512 * 2**20


@pytest.mark.parametrize(("text", "expected"), [("1073741824", 2**30), ("2GiB", 2**31), ("1.5g", 3 * 2**29),
                                                ("64 MB", 64 * 2**20), ("8k", 8192)])
def test_parse_bytes(text: str, expected: int) -> None:
    assert batching.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "1X"])
def test_bad_budgets_are_refused(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(batching.ENVIRONMENT_VARIABLE, text if text else "  x")
    with pytest.raises(ValueError, match=batching.ENVIRONMENT_VARIABLE):
        batching.get_memory_budget()
    with pytest.raises(ValueError, match="memory budget"):
        batching.set_memory_budget(0)


def test_chunk_sizes_cover_the_rows() -> None:
    assert batching.chunk_sizes(10, 3) == [3, 3, 3, 1]
    assert batching.chunk_sizes(9, 3) == [3, 3, 3]
    assert batching.chunk_sizes(2, 3) == [2]
    assert batching.chunk_sizes(0, 3) == [0]
    assert batching.chunk_rows(1000, budget=10_000) == 10
    assert batching.chunk_rows(10**9, budget=10) == 1


def test_rows_per_chunk_follow_the_circuit_arithmetic() -> None:
    """The max-product estimate counts its ``[R, L, K, K²]`` scores; a digits-sized circuit's mpe needs several
    chunks at the default budget for 10 000 rows (the old code materialized 13 GB)."""
    spn = RatSPN(64, depth=3, num_repetitions=10, num_sums=20, num_leaves=20, leaf=Binomial(total_count=16))
    row = batching.sampling_row_bytes(spn, "argmax", "region", True)
    assert row >= 4 * 10 * 4 * 20 * 400
    assert len(batching.chunk_sizes(10_000, batching.chunk_rows(row))) >= 10
    assert batching.sampling_row_bytes(spn, "soft", "unit", False, grad=True) > batching.sampling_row_bytes(
        spn, "exact", "region", False)
    assert batching.upward_row_bytes(spn, grad=True) >= batching.upward_row_bytes(spn)


# -- exact paths: equal whatever the chunks --------------------------------------------------------------------
def test_log_prob_and_mpe_are_equal_in_chunks(spn: RatSPN) -> None:
    d = SPNDistribution(spn)
    torch.manual_seed(0)
    x, evidence = d.sample((37,)), _evidence(d, 37)
    conditional = d.condition(evidence)
    with torch.no_grad():
        expected = (d.log_prob(x), d.log_prob(evidence), d.mpe_with_log_prob(evidence), conditional.log_prob(x),
                    conditional.mean)
        with batching.memory_budget(1):  # one row per chunk
            chunked = (d.log_prob(x), d.log_prob(evidence), d.mpe_with_log_prob(evidence), conditional.log_prob(x),
                       conditional.mean)
    for a, b in zip(expected[:2] + expected[2] + expected[3:], chunked[:2] + chunked[2] + chunked[3:], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0.0)


def test_a_tiny_budget_runs_one_row_per_chunk(spn: RatSPN, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    original = sampler.mpe

    def counted(circuit: RatSPN, evidence: Tensor) -> tuple[Tensor, Tensor]:
        calls.append(evidence.shape[0])
        return original(circuit, evidence)

    monkeypatch.setattr("pyro_spn.rows.mpe", counted)
    d = SPNDistribution(spn)
    evidence = _evidence(d, 11)
    with torch.no_grad():
        d.mpe(evidence)
        assert calls == [11]
        calls.clear()
        with batching.memory_budget(1):
            completion = d.mpe(evidence)
    assert calls == [1] * 11
    observed = ~torch.isnan(evidence)
    assert torch.equal(completion[observed], evidence[observed])


def test_log_prob_gradient_is_equal_in_chunks(spn: RatSPN) -> None:
    d = SPNDistribution(spn)
    torch.manual_seed(1)
    x = _evidence(d, 30).requires_grad_(True)
    (d.log_prob(x).nan_to_num() * torch.linspace(0.5, 1.5, 30)).sum().backward()
    expected, expected_x = _grads(spn), cast(Tensor, x.grad).clone()
    spn.zero_grad()
    x.grad = None
    with batching.memory_budget(batching.upward_row_bytes(spn, grad=True) * 7):  # chunks of 7 rows
        (d.log_prob(x).nan_to_num() * torch.linspace(0.5, 1.5, 30)).sum().backward()
    for a, b in zip(expected + [expected_x], _grads(spn) + [x.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, equal_nan=True)


# -- random paths: chunk after chunk from the same generator -------------------------------------------------
ROUTES = list(itertools.product([True, False], ["unit", "region"], [False, True]))


@pytest.mark.parametrize(("hard", "interpolation", "conditional"), ROUTES)
def test_rsample_in_chunks_is_the_chunk_by_chunk_draw_with_its_gradient(
        spn: RatSPN, hard: bool, interpolation: str, conditional: bool) -> None:
    """A checkpointed chunked ``rsample`` equals drawing the same chunks one after the other (so the recomputation
    in the backward replays each chunk's noise), values and gradients, the temperature's included."""
    temperature = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    d = SPNDistribution(spn, hard=hard, interpolation=interpolation, temperature=temperature)  # type: ignore[arg-type]
    torch.manual_seed(2)
    evidence = _evidence(d, 9)
    target: Callable[[tuple[int, ...]], Tensor] = d.condition(evidence).rsample if conditional else d.rsample
    rule = "straight_through" if hard else "soft"
    row = batching.sampling_row_bytes(spn, rule, interpolation, conditional, grad=True)  # type: ignore[arg-type]
    weights = torch.linspace(-1, 1, 8, dtype=torch.float64)

    def loss(samples: Tensor) -> Tensor:
        return (samples * weights).square().sum()

    with batching.memory_budget(row * 4):
        torch.manual_seed(3)
        chunked = target((2,) if conditional else (18,))
        torch.manual_seed(4)
        loss(chunked).backward()
    expected_grads = _grads(spn) + [cast(Tensor, temperature.grad).clone()]
    spn.zero_grad()
    temperature.grad = None
    torch.manual_seed(3)
    if conditional:
        flat = evidence.expand(2, 9, 8).reshape(18, 8)
        pieces = [SPNDistribution(spn, hard=hard, interpolation=interpolation,  # type: ignore[arg-type]
                                  temperature=temperature).condition(flat[start:start + 4]).rsample()
                  for start in range(0, 18, 4)]
    else:
        pieces = [d.rsample((n,)) for n in (4, 4, 4, 4, 2)]
    by_chunk = torch.cat(pieces).reshape(chunked.shape)
    torch.manual_seed(4)
    loss(by_chunk).backward()
    assert torch.equal(chunked, by_chunk)
    for a, b in zip(expected_grads, _grads(spn) + [temperature.grad], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _binary_circuit() -> RatSPN:
    return RatSPN(3, depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=Binomial(total_count=1),
                  seed=5).double()


def _chi_square(samples: Tensor, log_probs: Tensor, states: Tensor) -> float:
    """Pearson's statistic of the samples' state counts against ``exp(log_probs)`` over ``states``."""
    counts = (samples[:, None, :] == states[None]).all(-1).sum(0).double()
    expected = log_probs.exp() * samples.shape[0]
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("conditional", [False, True])
def test_samples_drawn_one_row_per_chunk_follow_the_circuit(conditional: bool) -> None:
    """Exact samples drawn in 60 chunks have the circuit's law: a chi-square test of the 8 states' counts (7 degrees
    of freedom; 30 is far beyond the 0.9999 quantile, 27.9)."""
    spn = _binary_circuit()
    d = SPNDistribution(spn)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=3)), dtype=torch.float64)
    torch.manual_seed(6)
    n = 3000
    with torch.no_grad():
        if conditional:
            evidence = torch.tensor([[1.0, NAN, NAN]], dtype=torch.float64)
            probabilities = d.condition(evidence.expand(8, 3)).log_prob(states)
            observed = states[:, 0] == 1
            states, probabilities = states[observed], probabilities[observed]
            with batching.memory_budget(batching.sampling_row_bytes(spn, "exact", "region", True) * 50):
                samples = d.condition(evidence).sample((n,))[:, 0]
        else:
            probabilities = d.log_prob(states)
            with batching.memory_budget(batching.sampling_row_bytes(spn, "exact", "region", False) * 50):
                samples = d.sample((n,))
    torch.testing.assert_close(probabilities.exp().sum(), torch.tensor(1.0, dtype=torch.float64))
    assert _chi_square(samples, probabilities, states) < 30.0
    assert len({tuple(row.tolist()) for row in samples[:64]}) > 1  # every chunk draws new noise


# -- the memory a large call takes ---------------------------------------------------------------------------
_PEAK_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import torch
    from pyro_spn import RatSPN, SPNDistribution, batching
    from pyro_spn.leaves import Binomial
    torch.set_num_threads(1)
    features, depth, units, n = (int(a) for a in sys.argv[1:])
    spn = RatSPN(features, depth=depth, num_repetitions=10, num_sums=units, num_leaves=units,
                 leaf=Binomial(total_count=16))
    d = SPNDistribution(spn)
    evidence = torch.full((n, features), float("nan"))
    evidence[:, : features // 2] = 3.0
    def peak():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with torch.no_grad():
        d.mpe(evidence[:2])
    before = peak()
    with torch.no_grad():
        completion = d.mpe(evidence)
    print(json.dumps({"growth": peak() - before, "shape": list(completion.shape),
                      "row": batching.sampling_row_bytes(spn, "argmax", "region", True)}))
""")


def _mpe_peak(features: int, depth: int, units: int, rows: int, budget: str) -> dict[str, int]:
    """The resident-set growth of one ``mpe`` of ``rows`` rows in a fresh process under ``budget``."""
    environment = dict(os.environ, PYRO_SPN_MEMORY_BUDGET=budget, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    result = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, str(features), str(depth), str(units), str(rows)],
                            capture_output=True, text=True, env=environment, timeout=300, check=True)
    measured: dict[str, int] = json.loads(result.stdout.strip().splitlines()[-1])
    assert measured["shape"] == [rows, features]
    return measured


def test_peak_memory_of_a_large_mpe_stays_within_the_budget() -> None:
    """1000 rows of max-product completion of a small circuit: unchunked, its ``[N, R, L, K, K²]`` scores alone
    take 328 MB; under a 4 MiB budget the resident set grows by less than 60 MB."""
    measured = _mpe_peak(16, 2, 16, 1000, "4M")
    assert measured["row"] * 1000 > 300 * 2**20
    assert measured["growth"] < 60 * 2**20, f"peak grew by {measured['growth'] / 2**20:.0f} MiB"


@pytest.mark.slow
def test_peak_memory_of_a_digits_mpe_stays_within_the_budget() -> None:
    """600 rows of a digits-sized circuit (64 Binomial(16) variables, depth 3, R=10, K=I=20): unchunked 768 MB of
    scores; under a 32 MiB budget the resident set grows by less than 200 MB."""
    measured = _mpe_peak(64, 3, 20, 600, "32M")
    assert measured["row"] * 600 > 600 * 2**20
    assert measured["growth"] < 200 * 2**20, f"peak grew by {measured['growth'] / 2**20:.0f} MiB"
    assert math.isfinite(measured["growth"])
