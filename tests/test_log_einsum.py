"""The chunked log-einsum-exp (the einsum layer's CPU path) against its plain reference and a direct
log-sum-exp: values, first and second derivatives, chunk boundaries, floored children, threads; every test runs
with the native kernel and with the PyTorch path."""

import threading

import pytest
import torch

from pyro_spn import log_einsum as module
from pyro_spn import native
from pyro_spn.log_einsum import exp_floor, log_einsum, log_einsum_reference


def random_inputs(repetitions=2, regions=3, num_inputs=3, num_outputs=2, num_samples=5, spread=3.0, seed=0,
                  dtype=torch.float64):
    """Children ``[R, 2L, K, N]`` and the weights' logits ``[R, L, K_out, K * K]``."""
    g = torch.Generator().manual_seed(seed)
    x = spread * torch.randn(repetitions, 2 * regions, num_inputs, num_samples, generator=g, dtype=dtype)
    logits = torch.randn(repetitions, regions, num_outputs, num_inputs * num_inputs, generator=g, dtype=dtype)
    return x, logits


def direct(x, logits):
    """``log Σ_ij w[k, i*K+j] exp(left_i + right_j)`` by torch.logsumexp over an explicit pair axis."""
    left, right = x[:, 0::2], x[:, 1::2]  # [R, L, K, N]
    pairs = (left[:, :, :, None, :] + right[:, :, None, :, :]).flatten(2, 3)  # [R, L, K*K, N]
    return torch.logsumexp(logits.log_softmax(-1)[..., None] + pairs[:, :, None], dim=3)  # [R, L, K_out, N]


@pytest.fixture(autouse=True, params=["native", "torch"])
def path(request):
    """Run each test with the native kernel (required to build wherever a C compiler is) and without it."""
    if request.param == "native":
        assert native.available(), "the native kernel did not build"
        yield request.param
    else:
        with native.disabled():
            yield request.param


@pytest.fixture(params=[1, 2, 100], ids=["one-group-chunks", "two-group-chunks", "one-chunk"])
def chunk_groups(request, monkeypatch):
    """Run with chunks of 1 or 2 groups (so that the 6 groups of ``random_inputs`` split evenly, or not), or one."""
    num_inputs, num_samples = 3, 5
    monkeypatch.setattr(module, "PAIRS_CHUNK_BYTES", request.param * num_inputs**2 * num_samples * 8)
    return request.param


def test_values_match_reference_and_direct(chunk_groups):
    x, logits = random_inputs(regions=3)
    out = log_einsum(x, logits)
    assert out.shape == (2, 3, 2, 5)
    assert torch.allclose(out, log_einsum_reference(x, logits), rtol=1e-12, atol=1e-12)
    assert torch.allclose(out, direct(x, logits), rtol=1e-12, atol=1e-12)


def test_gradcheck(chunk_groups):
    x, logits = random_inputs(regions=3)
    assert torch.autograd.gradcheck(log_einsum, (x.requires_grad_(), logits.requires_grad_()))


def test_gradgradcheck_under_create_graph():
    x, logits = random_inputs(regions=2, num_samples=3)
    assert torch.autograd.gradgradcheck(log_einsum, (x.requires_grad_(), logits.requires_grad_()))


@pytest.mark.parametrize("needs", [(True, False), (False, True)], ids=["children-only", "logits-only"])
def test_gradient_of_one_input(needs):
    x, logits = random_inputs()
    x.requires_grad_(needs[0])
    logits.requires_grad_(needs[1])
    target = x if needs[0] else logits
    upstream = torch.randn(2, 3, 2, 5, dtype=torch.float64)
    (grad,) = torch.autograd.grad((log_einsum(x, logits) * upstream).sum(), [target])
    (expected,) = torch.autograd.grad((direct(x, logits) * upstream).sum(), [target])
    assert torch.allclose(grad, expected, atol=1e-12)


def test_float32_gradients_with_floored_children(chunk_groups):
    """Children hundreds of nats below their region's best are floored before exp: in float32 the values and
    gradients equal the same formula written with autograd (clamp, exp, matmul, log), and the floored children
    get no gradient."""
    x, logits = random_inputs(spread=200.0, dtype=torch.float32)
    x.requires_grad_()
    logits.requires_grad_()
    upstream = torch.randn(2, 3, 2, 5)
    out = log_einsum(x, logits)
    grads = torch.autograd.grad((out * upstream).sum(), [x, logits])

    shift = x.detach().amax(2, keepdim=True)
    scaled = (x - shift).clamp_min(exp_floor(torch.float32)).exp()
    left, right = scaled[:, 0::2], scaled[:, 1::2]
    pairs = (left[:, :, :, None, :] * right[:, :, None, :, :]).flatten(2, 3)
    expected = (logits.softmax(-1) @ pairs).log() + shift[:, 0::2] + shift[:, 1::2]
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [x, logits])
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-4)
    floored = (x - shift) < exp_floor(torch.float32)
    assert floored.any()
    assert (grads[0][floored] == 0).all()
    for grad, reference in zip(grads, expected_grads, strict=True):
        assert torch.allclose(grad, reference, rtol=1e-4, atol=1e-6)


def test_impossible_region_is_minus_infinity_with_nan_free_gradients():
    """A child region whose units are all impossible makes its output region impossible (``-inf``, as a direct
    log-sum-exp gives) and passes no NaN back; the other regions are unaffected."""
    x, logits = random_inputs()
    x[0, 0] = -float("inf")  # every unit of one left child impossible
    x.requires_grad_()
    out = log_einsum(x, logits)
    out.sum().backward()
    assert (out[0, 0] == -float("inf")).all()
    assert torch.allclose(out[:, 1:], direct(x, logits)[:, 1:]) and torch.isfinite(out[1]).all()
    assert not torch.isnan(x.grad).any()


def test_empty_batch():
    x, logits = random_inputs(num_samples=0)
    x.requires_grad_()
    out = log_einsum(x, logits)
    assert out.shape == (2, 3, 2, 0)
    out.sum().backward()
    assert x.grad.shape == x.shape


def test_threads_share_no_buffers():
    """Each thread has its own chunk buffers: concurrent calls give the single-threaded results."""
    inputs = [random_inputs(regions=4, num_inputs=4, num_samples=64, seed=seed, dtype=torch.float32)
              for seed in range(4)]
    expected = [log_einsum(x, w) for x, w in inputs]
    results = [None] * len(inputs)

    def run(index):
        for _ in range(20):
            results[index] = log_einsum(*inputs[index])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for result, reference in zip(results, expected, strict=True):
        assert torch.equal(result, reference)

