"""The fused soft-selection kernel against its plain PyTorch reference: given the same noise the same values and
gradients (float64 ``gradcheck`` included); the noise is standard Gumbel, independent, reproducible from torch's
seed."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from scipy import stats

from pyro_spn import native
from pyro_spn.native import soft_select as kernel
from pyro_spn.sampling.fused import SoftSelection, soft_select, soft_select_reference

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None,
                                reason="no C compiler: the kernel cannot be built")


def test_the_kernel_builds_where_there_is_a_compiler():
    assert kernel.supports(torch.zeros(1, 1, 1))


def _inputs(dtype: torch.dtype, logw: bool, bias: bool, shape=(5, 3, 4, 13), seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    num_samples, groups, units, pairs = shape
    s = torch.rand(num_samples, groups, units, generator=generator, dtype=dtype)
    w = 3 * torch.randn(groups, units, pairs, generator=generator, dtype=dtype) if logw else None
    b = 3 * torch.randn(num_samples, groups, pairs, generator=generator, dtype=dtype) if bias else None
    return s, w, b


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("logw, bias", [(True, False), (True, True), (False, True)])
@pytest.mark.parametrize("pairs", [1, 7, 8, 13, 400])
def test_same_noise_same_values_and_gradients(dtype, logw, bias, pairs):
    s, w, b = _inputs(dtype, logw, bias, shape=(5, 3, 4 if logw else 1, pairs))
    tau = torch.tensor(0.7, dtype=dtype)
    seed = 2**40 + 123
    noise = kernel.gumbel((*s.shape, pairs), seed, dtype)
    leaves = [t.clone().requires_grad_() for t in (s, w, b, 1 / tau) if t is not None]
    fused_inputs = [leaves.pop(0), leaves.pop(0) if w is not None else None, leaves.pop(0) if b is not None else None,
                    leaves.pop(0)]
    fused = SoftSelection.apply(*fused_inputs, seed)
    reference_inputs = [None if t is None else t.detach().clone().requires_grad_() for t in fused_inputs]
    reference = soft_select_reference(*reference_inputs[:3], 1 / reference_inputs[3], noise)
    tolerance = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused, reference, **tolerance)
    grad = torch.randn(fused.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    fused.backward(grad)
    reference.backward(grad)
    for mine, theirs in zip(fused_inputs, reference_inputs, strict=True):
        if mine is not None:
            torch.testing.assert_close(mine.grad, theirs.grad, rtol=1e-4 if dtype == torch.float32 else 1e-10,
                                       atol=1e-5 if dtype == torch.float32 else 1e-10)


def test_gradcheck_and_gradgradcheck_in_float64():
    s, w, b = _inputs(torch.float64, True, True, shape=(3, 2, 3, 5))
    inv_tau = torch.tensor(1.3, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (s, w, b, inv_tau))

    def function(*args: torch.Tensor) -> torch.Tensor:
        return SoftSelection.apply(*args, 99)

    assert torch.autograd.gradcheck(function, inputs)
    assert torch.autograd.gradgradcheck(function, inputs)


def test_the_noise_is_standard_gumbel_and_independent():
    noise = kernel.gumbel((64, 16, 4, 401), seed=7).double()
    flat = noise.flatten()[:200_000].numpy()
    assert stats.kstest(flat, stats.gumbel_r.cdf).pvalue > 1e-3
    assert abs(float(noise.mean()) - 0.5772156649) < 5 * math.pi / math.sqrt(6 * noise.numel())
    # neighbouring elements of a row, and the same element of neighbouring rows, are uncorrelated
    rows = noise.reshape(-1, 401)
    for a, b in ((rows[:, :-1], rows[:, 1:]), (rows[:-1], rows[1:])):
        correlation = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(float(correlation)) < 5 / math.sqrt(a.numel())
    other_seed = kernel.gumbel((64, 16, 4, 401), seed=8).double()
    assert abs(float(torch.corrcoef(torch.stack([noise.flatten(), other_seed.flatten()]))[0, 1])) < 0.005


def test_seeding_reproduces_and_the_global_generator_advances():
    s, w, b = _inputs(torch.float32, True, False)
    torch.manual_seed(3)
    first = soft_select(s, w, b, 0.5)
    second = soft_select(s, w, b, 0.5)
    torch.manual_seed(3)
    assert torch.equal(soft_select(s, w, b, 0.5), first)
    assert not torch.equal(first, second)


def test_the_pytorch_path_runs_without_the_kernel():
    s, w, b = _inputs(torch.float32, True, True)
    with native.disabled():
        assert not kernel.supports(s, w, b)
        pairs = soft_select(s, w, b, 0.5)
    torch.testing.assert_close(pairs.sum(-1), s.sum(-1))


def test_empty_batches_and_bad_arguments():
    s, w, _ = _inputs(torch.float32, True, False)
    assert kernel.forward(s[:0], w, None, 2.0, 1).shape == (0, 3, 13)
    with pytest.raises(ValueError, match="logw must have shape"):
        kernel.forward(s, w[:, :2], None, 2.0, 1)
    with pytest.raises(ValueError, match="bias must have shape"):
        kernel.forward(s, w, torch.zeros(5, 3, 12), 2.0, 1)
    with pytest.raises(ValueError, match="cannot both be None"):
        kernel.forward(s, None, None, 2.0, 1)
