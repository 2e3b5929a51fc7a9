"""The einsum layer against a direct log-sum-exp, including children hundreds of nats apart (where the layer
floors children before exp to keep its arithmetic out of subnormal floats)."""

import pytest
import torch

from pyro_spn.layers import EinsumLayer


def reference(layer: EinsumLayer, x: torch.Tensor) -> torch.Tensor:
    """``log Σ_ij w[k, i, j] exp(left_i + right_j)`` with torch.logsumexp, in float64."""
    left, right = x[:, :, 0::2].double(), x[:, :, 1::2].double()
    pairs = (left[..., :, None] + right[..., None, :]).flatten(-2)  # [N, R, L, Q]
    log_w = layer.logits.double().flatten(-2).log_softmax(-1)  # [R, L, K, Q]
    return torch.logsumexp(pairs[:, :, :, None, :] + log_w, dim=-1)


@pytest.mark.parametrize("spread", [1.0, 50.0, 500.0, 5000.0])
def test_layer_matches_log_sum_exp_in_float32(spread):
    torch.manual_seed(0)
    layer = EinsumLayer(4, 5, 3, 2, torch.Generator().manual_seed(1))
    x = spread * torch.randn(16, 2, 8, 5) - 300.0
    out = layer(x)
    expected = reference(layer, x)
    assert out.dtype == torch.float32
    # float32 rounding of the region maxima (the output is their sum plus a log-sum-exp of the differences),
    # plus the floored children's share (< e^-30 of the best pair's)
    magnitude = x[:, :, 0::2].abs().amax(-1) + x[:, :, 1::2].abs().amax(-1)  # [N, R, L]
    tolerance = 1e-6 * magnitude[..., None].double() + 1e-5
    assert ((out.double() - expected).abs() <= tolerance).all()
    # in float64 the floor (-248 nats) leaves the values exact
    assert torch.allclose(layer.double()(x.double()), expected, rtol=1e-12, atol=1e-9)


def test_layer_gradients_match_log_sum_exp():
    torch.manual_seed(0)
    layer = EinsumLayer(2, 4, 3, 2, torch.Generator().manual_seed(2)).double()
    x = (200.0 * torch.randn(8, 2, 4, 4, dtype=torch.float64)).requires_grad_()
    weights = torch.randn(8, 2, 2, 3, dtype=torch.float64)
    (layer(x) * weights).sum().backward()
    grad_x, grad_logits = x.grad.clone(), layer.logits.grad.clone()
    x.grad = None
    layer.logits.grad = None
    (reference(layer, x) * weights).sum().backward()
    assert torch.allclose(grad_x, x.grad, atol=1e-10)
    assert torch.allclose(grad_logits, layer.logits.grad, atol=1e-10)


def test_all_children_impossible_gives_minus_infinity_without_nan():
    """Impossible children make the output impossible (``-inf``, the exact log-sum-exp), on both paths, and pass
    back a zero gradient (no NaN)."""
    layer = EinsumLayer(1, 3, 2, 1, torch.Generator().manual_seed(0))
    for forward in (layer.forward, layer._forward_broadcast):
        x = torch.full((2, 1, 2, 3), -float("inf"), requires_grad=True)
        out = forward(x)
        assert (out == -float("inf")).all()
        out.sum().backward()
        assert (x.grad == 0).all()


def test_cpu_and_gpu_formulas_agree():
    """The GPU path (broadcast outer product, autograd) run on the CPU gives the CPU path's values and gradients."""
    torch.manual_seed(0)
    layer = EinsumLayer(4, 5, 3, 2, torch.Generator().manual_seed(3))
    x = (100.0 * torch.randn(16, 2, 8, 5)).requires_grad_()
    weights = torch.randn(16, 2, 4, 3)
    outputs, grads = [], []
    for forward in (layer.forward, layer._forward_broadcast):
        out = forward(x)
        outputs.append(out)
        grads.append(torch.autograd.grad((out * weights).sum(), [x, layer.logits]))
    assert torch.allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-4)
    for cpu, gpu in zip(grads[0], grads[1], strict=True):
        assert torch.allclose(cpu, gpu, rtol=1e-4, atol=1e-5)


def test_leaf_layer_output_is_already_in_the_cpu_layout():
    """The leaf log-likelihoods ``[N, R, L, I]`` are a view of a contiguous ``[R, L, I, N]`` tensor, and every
    einsum layer's output likewise, so that the layers' ``[R, L, K, N]`` transposition copies nothing."""
    from pyro_spn import RatSPN
    from pyro_spn.leaves import Binomial

    spn = RatSPN((1, 4, 4), depth=2, num_repetitions=3, num_sums=4, num_leaves=5, leaf=Binomial(total_count=8))
    x = torch.randint(0, 9, (7, 1, 4, 4)).float()
    with torch.no_grad():
        inputs = spn.upward(x).layer_inputs
    for layer_input in inputs:
        assert layer_input.permute(1, 2, 3, 0).is_contiguous()


def test_whole_model_same_with_and_without_the_native_kernel():
    """A RatSPN's log-likelihood and every parameter's gradient are the same (float64) whether the einsum layers
    run the native kernel or their PyTorch path."""
    from pyro_spn import RatSPN, native
    from pyro_spn.leaves import Binomial

    if not native.available():
        pytest.skip("the native kernel is not available")
    spn = RatSPN((1, 6, 6), depth=3, num_repetitions=2, num_sums=7, num_leaves=5, leaf=Binomial(total_count=8),
                 seed=1).double()
    x = torch.randint(0, 9, (37, 1, 6, 6)).double()
    results = []
    for context in (torch.enable_grad, native.disabled):
        with context():
            spn.zero_grad()
            log_likelihood = spn(x)
            log_likelihood.sum().backward()
            results.append((log_likelihood.detach(), [p.grad.clone() for p in spn.parameters()]))
    (native_ll, native_grads), (torch_ll, torch_grads) = results
    assert torch.allclose(native_ll, torch_ll, rtol=1e-12, atol=1e-10)
    for got, expected in zip(native_grads, torch_grads, strict=True):
        assert torch.allclose(got, expected, rtol=1e-10, atol=1e-12)
