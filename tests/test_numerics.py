"""Numerical reliability: the einsum layers are an exact log-sum-exp whatever the spread of their inputs (against
float64 plain torch), Normal leaves keep float32 precision far from the origin, infinite values and empty batches
give what torch gives, and no gradient turns NaN at the edges of the parameters' ranges (issue 15)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.distributions as td

from pyro_spn import RatSPN, SPNDistribution, native
from pyro_spn import log_einsum as log_einsum_module
from pyro_spn.checks import MIN_TEMPERATURE
from pyro_spn.layers import EinsumLayer
from pyro_spn.leaves import Binomial, Mixed, Normal
from pyro_spn.log_einsum import log_einsum
from pyro_spn.temperature import AnnealedTemperature, ConstantTemperature, LearnedTemperature, make_temperature

NATIVE_AND_TORCH = [pytest.param(True, id="native"), pytest.param(False, id="torch-path")]


@pytest.fixture(params=NATIVE_AND_TORCH)
def kernel(request):
    """Run with the native kernel and with the PyTorch path of the einsum layers' CPU code."""
    if request.param:
        assert native.available(), "the native kernel did not build"
        yield "native"
    else:
        with native.disabled():
            yield "torch"


# -- references ---------------------------------------------------------------------------------------------------

def direct_log_einsum(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """``log Σ_ij w[k, i*K+j] exp(left_i + right_j)`` by ``torch.logsumexp`` over an explicit pair axis, in float64;
    ``x`` ``[R, 2L, K, N]``, ``logits`` ``[R, L, K_out, K*K]`` → ``[R, L, K_out, N]``."""
    x, logits = x.double(), logits.double()
    left, right = x[:, 0::2], x[:, 1::2]
    pairs = (left[:, :, :, None, :] + right[:, :, None, :, :]).flatten(2, 3)  # [R, L, K*K, N]
    return torch.logsumexp(logits.log_softmax(-1)[..., None] + pairs[:, :, None], dim=3)


def reference_log_likelihood(spn: RatSPN, x: torch.Tensor, max_product: bool = False) -> torch.Tensor:
    """:func:`plain_log_likelihood` of a float64 copy of the circuit, without gradient."""
    return plain_log_likelihood(copy.deepcopy(spn).double(), x, max_product).detach()


def plain_log_likelihood(spn: RatSPN, x: torch.Tensor, max_product: bool = False) -> torch.Tensor:
    """The circuit's log-likelihood ``[N]`` (or max-product value) in plain torch, in the circuit's dtype: every
    component's ``torch.distributions`` log-density, summed into its leaf region, then a log-sum-exp (max) over the
    pairs of every layer and the repetitions. Missing (NaN) entries contribute 0 (max-product: the component's
    mode)."""
    flat = x.to(spn.root.logits.dtype).reshape(x.shape[0], spn.num_channels, spn.num_features)
    params = spn.leaf_layer.params()
    if isinstance(spn.leaf, Normal):
        dist = td.Normal(params["loc"], params["scale"])
        mode = dist.loc
    else:
        dist = td.Binomial(total_count=spn.leaf.total_count, logits=params["logits"])
        mode = spn.leaf_layer.mode()
    missing = torch.isnan(flat)[..., None, None]
    log_prob = dist.log_prob(torch.where(torch.isnan(flat), 0.0, flat)[..., None, None])  # [N, C, F, I, R]
    fill = dist.log_prob(mode).expand_as(log_prob) if max_product else torch.zeros_like(log_prob)
    per_variable = torch.where(missing, fill, log_prob).sum(1)  # [N, F, I, R]
    regions = torch.stack([
        per_variable.new_zeros(x.shape[0], spn.leaf_layer.leaf_slots.shape[1], spn.num_leaves).index_add(
            1, spn.leaf_layer.variable_region[repetition], per_variable[..., repetition])
        for repetition in range(spn.num_repetitions)], dim=1)  # [N, R, L, I]
    for layer in spn.einsum_layers:
        left, right = regions[:, :, 0::2], regions[:, :, 1::2]
        scores = (left[..., :, None] + right[..., None, :]).flatten(-2)[:, :, :, None, :] + layer.log_weights()
        regions = scores.amax(-1) if max_product else scores.logsumexp(-1)
    top = regions[:, :, 0, 0] + spn.root.log_weights()
    return top.amax(-1) if max_product else top.logsumexp(-1)


def spread_children(seed: int, spread: float, dtype=torch.float32, shape=(2, 6, 5, 7), num_outputs=3):
    """Children ``[R, 2L, K, N]`` hundreds of nats apart and logits ``[R, L, K_out, K*K]`` spread over tens of nats,
    so that the heavily weighted pairs often sit far below a region's best pair."""
    g = torch.Generator().manual_seed(seed)
    repetitions, two_regions, num_inputs, num_samples = shape
    x = spread * torch.randn(shape, generator=g, dtype=dtype)
    logits = 15.0 * torch.randn(repetitions, two_regions // 2, num_outputs, num_inputs**2, generator=g, dtype=dtype)
    return x, logits


def float32_tolerance(x: torch.Tensor) -> torch.Tensor:
    """Rounding of float32 inputs of this size: a few ulps of the largest children of each output's pair
    ``[R, L, 1, N]``."""
    magnitude = x.abs().amax(2, keepdim=True)
    return 4e-7 * (magnitude[:, 0::2] + magnitude[:, 1::2]).double() + 1e-5


# -- item 7: the einsum layers are exact whatever the spread ------------------------------------------------------

def test_heavily_weighted_pairs_far_below_the_best_pair(kernel):
    """One output whose weight sits on pairs 80 nats below the best one: the floor (-30.6 nats in float32) made
    the layer return about -59.7 instead of -60."""
    x = torch.tensor([0.0, -40.0, 0.0, -40.0]).view(1, 2, 2, 1)  # [R, 2L, K, N]: left (0, -40), right (0, -40)
    logits = torch.tensor([-60.0, -60.0, -60.0, 0.0]).view(1, 1, 1, 4)  # w(0,0) ≈ e^-60, w(1,1) ≈ 1
    expected = direct_log_einsum(x, logits)
    assert float(expected) == pytest.approx(-60.0, abs=1e-6)
    assert float(log_einsum(x, logits)) == pytest.approx(float(expected), abs=1e-5)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("spread", [30.0, 300.0])
def test_log_einsum_fuzz_against_float64(kernel, seed, spread):
    x, logits = spread_children(seed, spread)
    out = log_einsum(x, logits)
    expected = direct_log_einsum(x, logits)
    assert ((out.double() - expected).abs() <= float32_tolerance(x)).all()


@pytest.mark.parametrize("seed", range(6))
def test_log_einsum_gradients_fuzz_against_float64(kernel, seed):
    """The gradients of spread inputs equal float64 autograd through ``torch.logsumexp`` (posterior shares)."""
    x, logits = spread_children(seed, 100.0)
    upstream = torch.randn(2, 3, 3, 7, generator=torch.Generator().manual_seed(seed))
    x.requires_grad_()
    logits.requires_grad_()
    grads = torch.autograd.grad((log_einsum(x, logits) * upstream).sum(), [x, logits])
    x64, logits64 = x.detach().double().requires_grad_(), logits.detach().double().requires_grad_()
    expected = torch.autograd.grad((direct_log_einsum(x64, logits64) * upstream).sum(), [x64, logits64])
    for grad, reference in zip(grads, expected, strict=True):
        assert torch.allclose(grad.double(), reference, rtol=1e-3, atol=1e-4)


def test_recomputed_entries_gradcheck(kernel, monkeypatch):
    """With every entry recomputed (threshold raised to infinity), first and second derivatives of the direct
    log-sum-exp path pass ``gradcheck`` (float64), impossible children included."""
    monkeypatch.setattr(log_einsum_module, "exact_threshold", lambda dtype: math.inf)
    x, logits = spread_children(0, 3.0, dtype=torch.float64, shape=(2, 2, 2, 3), num_outputs=2)
    x[0, 0, :, 1] = -math.inf  # one sample's left child impossible: its output is -inf, with a zero gradient
    x.requires_grad_()
    logits.requires_grad_()
    out = log_einsum(x, logits)
    assert torch.equal(out == -math.inf, direct_log_einsum(x, logits) == -math.inf)
    assert torch.allclose(out[1], direct_log_einsum(x, logits)[1])
    grads = torch.autograd.grad(out.sum(), [x, logits])
    assert all(torch.isfinite(grad).all() for grad in grads)
    finite = x.detach()[1:].clone().requires_grad_()
    assert torch.autograd.gradcheck(log_einsum, (finite, logits.detach()[1:].clone().requires_grad_()))
    assert torch.autograd.gradgradcheck(log_einsum, (finite, logits.detach()[1:].clone().requires_grad_()))


@pytest.mark.parametrize("seed", range(8))
def test_gpu_formula_fuzz_against_float64(seed):
    """The einsum layer's GPU path (run here on the CPU) is exact too, values and gradients."""
    layer = EinsumLayer(3, 5, 3, 2, torch.Generator().manual_seed(seed))
    x, logits = spread_children(seed, 200.0, shape=(2, 6, 5, 7))
    with torch.no_grad():
        layer.logits.copy_(logits.view(layer.logits.shape))
    inputs = x.permute(3, 0, 1, 2).contiguous().requires_grad_()  # [N, R, 2L, K]
    out = layer._forward_broadcast(inputs)
    expected = direct_log_einsum(x, logits).permute(3, 0, 1, 2)
    tolerance = float32_tolerance(x).permute(3, 0, 1, 2)
    assert ((out.double() - expected).abs() <= tolerance).all()
    out.sum().backward()
    assert torch.isfinite(inputs.grad).all() and torch.isfinite(layer.logits.grad).all()


def test_max_product_fuzz_against_float64():
    """``forward_max`` is the float64 max over the pairs, to float32 rounding."""
    layer = EinsumLayer(3, 5, 3, 2, torch.Generator().manual_seed(0))
    x, logits = spread_children(0, 300.0, shape=(2, 6, 5, 7))
    with torch.no_grad():
        layer.logits.copy_(logits.view(layer.logits.shape))
    inputs = x.permute(3, 0, 1, 2)
    left, right = x.double()[:, 0::2], x.double()[:, 1::2]
    pairs = (left[:, :, :, None, :] + right[:, :, None, :, :]).flatten(2, 3)  # [R, L, K*K, N]
    expected = (logits.double().log_softmax(-1)[..., None] + pairs[:, :, None]).amax(3).permute(3, 0, 1, 2)
    tolerance = float32_tolerance(x).permute(3, 0, 1, 2)
    assert ((layer.forward_max(inputs).double() - expected).abs() <= tolerance).all()


def random_circuit(seed: int, leaf, num_features: int | None = None) -> RatSPN:
    """A small float32 circuit of random structure whose weights are spread over tens of nats."""
    g = torch.Generator().manual_seed(seed)

    def draw(low: int, high: int) -> int:
        return int(torch.randint(low, high + 1, (), generator=g))

    spn = RatSPN(num_features or draw(2, 9), depth=draw(1, 3), num_repetitions=draw(1, 3), num_sums=draw(1, 4),
                 num_leaves=draw(1, 4), leaf=leaf, seed=seed)
    with torch.no_grad():
        for name, p in spn.named_parameters():
            if name.startswith(("inner_layers", "root")):
                p.copy_(10.0 * torch.randn(p.shape, generator=g))
            elif name.endswith("logits"):  # Binomial leaves: probabilities from 1e-7 to 1 - 1e-7
                p.copy_(6.0 * torch.randn(p.shape, generator=g).clamp(-2.7, 2.7))
    return spn


@pytest.mark.parametrize("seed", range(25))
def test_circuit_fuzz_against_float64(kernel, seed):
    """Whole circuits with widely spread leaf log-likelihoods (Binomial(255) leaves with extreme probabilities)
    and spread weights: ``log_prob`` is the float64 plain-torch value to float32 precision."""
    spn = random_circuit(seed, Binomial(total_count=255))
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randint(0, 256, (16, spn.num_features), generator=g).float()
    with torch.no_grad():
        out = spn(x).double()
    expected = reference_log_likelihood(spn, x)
    assert torch.allclose(out, expected, rtol=2e-6, atol=1e-3)


# -- item 8: Normal leaves keep their precision far from the origin -----------------------------------------------

def normal_circuit(seed: int, loc: float, loc_spread: float, num_features: int | None = None,
                   dtype=torch.float32) -> RatSPN:
    """A random circuit of Normal leaves with locations ``loc ± loc_spread`` and scales from 1e-3 to 1."""
    spn = random_circuit(seed, Normal(min_scale=1e-6), num_features).to(dtype)
    g = torch.Generator().manual_seed(seed)
    layer = spn.leaf_layer
    with torch.no_grad():
        layer.loc.copy_(loc + loc_spread * torch.randn(layer.loc.shape, generator=g, dtype=dtype))
        scale = 10 ** (-3 * torch.rand(layer.raw_scale.shape, generator=g, dtype=dtype))
        layer.raw_scale.copy_(torch.log(torch.expm1(scale - 1e-6)))
    return spn


def near_components(spn: RatSPN, num_samples: int, seed: int) -> torch.Tensor:
    """Data ``[N, F]`` of one random component per variable, a draw of it: where every region has a likely
    component, the case in which the expanded form ``T(x)·η − A(η)`` cancels."""
    g = torch.Generator().manual_seed(seed)
    params = spn.leaf_layer.params()
    loc, scale = params["loc"][0].detach(), params["scale"][0].detach()  # [F, I, R]
    pick = torch.randint(loc.shape[1] * loc.shape[2], (num_samples, loc.shape[0]), generator=g)
    features = torch.arange(loc.shape[0])
    noise = torch.randn(num_samples, loc.shape[0], generator=g, dtype=loc.dtype)
    return loc.flatten(1)[features, pick] + scale.flatten(1)[features, pick] * noise


def test_normal_leaf_far_from_the_origin_is_exact():
    """The issue's cases: loc 3, scale 1e-3 gave 5.081 instead of 5.989; loc 100 gave -512.9."""
    for loc, expected in ((3.0, 5.989), (100.0, 5.989)):
        spn = RatSPN(1, depth=1, num_repetitions=1, num_sums=1, num_leaves=1, leaf=Normal(min_scale=1e-6))
        with torch.no_grad():
            spn.leaf_layer.loc.fill_(loc)
            spn.leaf_layer.raw_scale.fill_(math.log(math.expm1(1e-3 - 1e-6)))  # scale 1e-3
        x = torch.full((1, 1), loc)
        torch.testing.assert_close(SPNDistribution(spn).log_prob(x).detach(), torch.tensor([expected]),
                                   atol=1e-3, rtol=0.0)


@pytest.mark.parametrize("seed", range(10))
@pytest.mark.parametrize("loc, loc_spread", [(0.0, 1.0), (3.0, 0.5), (100.0, 3.0), (-1000.0, 10.0),
                                              (1e5, 1.0)])
def test_normal_circuit_fuzz_against_float64(kernel, seed, loc, loc_spread):
    """Random float32 circuits of narrow Normal leaves far from the origin, data drawn from their components:
    ``log_prob`` and the max-product value equal float64 ``torch.distributions`` to float32 precision."""
    spn = normal_circuit(seed, loc, loc_spread)
    x = near_components(spn, 16, seed)
    x[::3, 0] = float("nan")  # some missing entries (marginalized, or the mode under max-product)
    with torch.no_grad():
        for max_product in (False, True):
            out = spn.upward(x, max_product).log_likelihood.double()
            expected = reference_log_likelihood(spn, x, max_product)
            assert torch.allclose(out, expected, rtol=2e-6, atol=2e-4), (max_product, (out - expected).abs().max())


def test_mpe_value_far_from_the_origin():
    """The max-product value of a completion (what MPE maximizes) is the float64 one: with the cancelling leaf
    terms it was off by nats, enough to pick worse completions."""
    spn = normal_circuit(5, 100.0, 3.0, num_features=8)
    evidence = near_components(spn, 16, 5)
    evidence[:, ::2] = math.nan
    _, value = SPNDistribution(spn).mpe_with_log_prob(evidence)
    expected = reference_log_likelihood(spn, evidence, max_product=True)
    assert torch.allclose(value.detach().double(), expected, rtol=2e-6, atol=2e-4)


def test_normal_gradients_far_from_the_origin():
    """The gradients of every parameter, through the float64 contraction and the components evaluated on their
    own, equal float64 autograd through the plain-torch reference."""
    spn = normal_circuit(3, 100.0, 3.0, num_features=6)
    x = near_components(spn, 8, 3)
    grads = torch.autograd.grad(spn(x).sum(), list(spn.parameters()))
    spn64 = copy.deepcopy(spn).double()
    expected = torch.autograd.grad(plain_log_likelihood(spn64, x).sum(), list(spn64.parameters()))
    for grad, reference in zip(grads, expected, strict=True):
        assert torch.allclose(grad.double(), reference, rtol=1e-3, atol=1e-3 * float(reference.abs().max()) + 1e-6)


def test_float64_normal_circuit_keeps_float64_precision():
    """A float64 circuit has no wider dtype to sum in: the ill-conditioned components are evaluated on their own."""
    spn = normal_circuit(1, 100.0, 3.0, dtype=torch.float64)
    x = near_components(spn, 16, 1)
    with torch.no_grad():
        torch.testing.assert_close(spn(x), reference_log_likelihood(spn, x), rtol=1e-12, atol=1e-9)


# -- item 9: Binomial draws keep finite gradients for extreme logits ----------------------------------------------

@pytest.mark.parametrize("logit", [100.0, -100.0, 89.0, 1e4])
@pytest.mark.parametrize("hard", [True, False], ids=["straight-through", "soft"])
@pytest.mark.parametrize("interpolation", ["unit", "region"])
def test_binomial_rsample_gradients_finite_for_extreme_logits(logit, hard, interpolation):
    """Beyond ±88 nats ``p(1 − p)`` underflows in float32 and the square root of the Gaussian approximation's
    variance had an infinite slope: NaN gradients."""
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Binomial(total_count=255))
    with torch.no_grad():
        spn.leaf_layer.logits.fill_(logit)
    samples = SPNDistribution(spn, hard=hard, interpolation=interpolation).rsample((5,))
    samples.sum().backward()
    assert torch.isfinite(samples).all()
    for name, p in spn.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("logit", [100.0, -100.0, 1e4, -1e4])
def test_binomial_relaxed_draw_gradient_finite_for_extreme_logits(logit):
    leaf = Binomial(total_count=255)
    logits = torch.tensor([logit], requires_grad=True)
    for value in (None, leaf.sample({"logits": logits})):
        (grad,) = torch.autograd.grad(leaf.relaxed({"logits": logits}, 1.0, value).sum(), [logits])
        assert torch.isfinite(grad).all()


def test_binomial_relaxed_draw_moments_unchanged_for_moderate_logits():
    """The log-space standard deviation is ``sqrt(N p (1 − p))`` where that does not underflow."""
    leaf = Binomial(total_count=255)
    logits = torch.linspace(-20.0, 20.0, 41, dtype=torch.float64)
    mean, std = leaf.gaussian_relaxation({"logits": logits})
    p = torch.sigmoid(logits)
    torch.testing.assert_close(std, (255 * p * (1 - p)).sqrt().clamp_min(1e-6))
    torch.testing.assert_close(mean, 255 * p)


# -- item 10: infinite values are impossible, as in torch -----------------------------------------------------------

MIXED = Mixed([(Binomial(total_count=3), 2), (Normal(), 2)])


@pytest.mark.parametrize("leaf", [Normal(), MIXED], ids=["normal", "mixed"])
def test_infinite_values_have_log_prob_minus_infinity(kernel, leaf):
    """``±inf`` entries (of density zero, as ``torch.distributions.Normal`` says) give ``-inf``, not NaN; the other
    rows are unchanged and every gradient stays finite."""
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=leaf)
    x = torch.tensor([[1.0, 0.0, 0.5, 0.0], [1.0, 0.0, 0.5, math.inf], [1.0, 0.0, -math.inf, math.nan],
                      [1.0, 0.0, math.nan, 0.5]], requires_grad=True)
    log_prob = SPNDistribution(spn, validate_args=True).log_prob(x)
    assert float(td.Normal(0.0, 1.0).log_prob(torch.tensor(math.inf))) == -math.inf
    assert log_prob[1] == -math.inf and log_prob[2] == -math.inf
    torch.testing.assert_close(log_prob[[0, 3]], spn(x.detach()[[0, 3]]))
    assert torch.isfinite(log_prob[[0, 3]]).all()
    log_prob.sum().backward()
    assert torch.isfinite(x.grad).all()
    for name, p in spn.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        assert spn.upward(x, max_product=True).log_likelihood[1] == -math.inf


# -- item 11: empty batches ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("leaf", [Normal(), Binomial(total_count=5), MIXED], ids=["normal", "binomial", "mixed"])
@pytest.mark.parametrize("batch", [(0,), (3, 0)])
def test_empty_batches_give_empty_results(kernel, leaf, batch):
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=leaf)
    d = SPNDistribution(spn)
    x = torch.full(batch + (4,), math.nan)
    log_prob = d.log_prob(x)
    assert log_prob.shape == batch
    log_prob.sum().backward()
    completion, value = d.mpe_with_log_prob(x)
    assert completion.shape == x.shape and value.shape == batch
    assert d.mpe(x).shape == x.shape
    conditional = d.condition(x)
    assert conditional.sample().shape == x.shape
    assert conditional.sample((2,)).shape == (2,) + x.shape
    assert conditional.rsample().shape == x.shape
    assert conditional.log_prob(torch.zeros(batch + (4,))).shape == batch
    assert conditional.mean.shape == x.shape


def test_empty_batch_through_the_gpu_formula():
    layer = EinsumLayer(2, 3, 2, 2, torch.Generator().manual_seed(0))
    assert layer._forward_broadcast(torch.zeros(0, 2, 4, 3)).shape == (0, 2, 2, 2)


# -- item 12: the smallest temperatures keep gradients finite -------------------------------------------------------

@pytest.mark.parametrize("hard", [True, False], ids=["straight-through", "soft"])
@pytest.mark.parametrize("interpolation", ["unit", "region"])
def test_learned_temperature_at_its_smallest_floor_has_finite_gradients(hard, interpolation):
    """A learned temperature sitting on the smallest floor allowed keeps finite gradients (with a floor of 1e-30 the
    slope ``-z/τ²`` overflowed to NaN)."""
    tau = LearnedTemperature(init=2 * MIN_TEMPERATURE, floor=MIN_TEMPERATURE)
    with torch.no_grad():
        tau.raw.fill_(-100.0)  # τ = the floor
    spn = RatSPN(4, depth=2, num_repetitions=2, num_sums=3, num_leaves=2, leaf=Binomial(total_count=255))
    d = SPNDistribution(spn, temperature=tau(), hard=hard, interpolation=interpolation)
    d.rsample((5,)).sum().backward()
    assert torch.isfinite(tau.raw.grad)
    for name, p in spn.named_parameters():
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("make", [lambda: LearnedTemperature(init=1.0, floor=1e-30),
                                  lambda: LearnedTemperature(init=1e-29, floor=1e-30),
                                  lambda: ConstantTemperature(1e-30), lambda: AnnealedTemperature(1.0, minimum=1e-30),
                                  lambda: make_temperature("learned", value=1e-30)],
                         ids=["learned-floor", "learned-init", "constant", "annealed-minimum", "make"])
def test_temperatures_below_the_smallest_are_rejected(make):
    with pytest.raises(ValueError, match=r"floor|init|value|minimum") as info:
        make()
    assert "1e-06" in str(info.value)
