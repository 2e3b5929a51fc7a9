"""Selection rules (``pyro_spn.sampling.select``) and the circuit's samplers.

Goodness of fit is checked by enumerating every configuration of small discrete circuits and comparing
sample frequencies with ``exp(log_prob)`` (chi-square, fixed seeds, p > 1e-3).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import goodness_of_fit
from scipy import stats

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.gumbel import conditional_gumbel, gumbel_like
from pyro_spn.leaves import Bernoulli, Binomial, Categorical, Normal
from pyro_spn.sampling import ONE_HOT_RULES, RULES, select
from pyro_spn.sampling.leaf_values import leaf_values

# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------
LEAVES = {
    "bernoulli": (Bernoulli, [0.0, 1.0]),
    "categorical": (lambda: Categorical(num_categories=3), [0.0, 1.0, 2.0]),
    "binomial": (lambda: Binomial(total_count=2), [0.0, 1.0, 2.0]),
}
STRUCTURES = {  # depth, R, K (num_sums), I (num_leaves)
    "d1": (1, 2, 2, 2),
    "d2": (2, 3, 3, 2),
}


def make_spn(leaf, depth=2, reps=3, sums=3, leaves=2, seed=0, num_features=3) -> RatSPN:
    """A small circuit whose weights and leaves are far from uniform (so that mistakes show)."""
    spn = RatSPN(num_features, depth=depth, num_repetitions=reps, num_sums=sums, num_leaves=leaves,
                 leaf=leaf, seed=seed)
    g = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        spn.root.logits.copy_(1.5 * torch.randn(spn.root.logits.shape, generator=g))
        for layer in spn.inner_layers:
            layer.logits.mul_(3.0)
        if isinstance(spn.leaf, Normal):
            spn.leaf_layer.loc.mul_(2.0)
        else:
            spn.leaf_layer.logits.mul_(3.0)
    return spn


def configurations(values, num_features=3) -> torch.Tensor:
    return torch.tensor(list(itertools.product(values, repeat=num_features)), dtype=torch.float)


def config_index(x: torch.Tensor, values) -> torch.Tensor:
    """Index of every row of ``x [..., F]`` in :func:`configurations` order."""
    base = len(values)
    num_features = x.shape[-1]
    weights = torch.tensor([base ** (num_features - 1 - f) for f in range(num_features)])
    return (x.long() * weights).sum(-1)


def assert_fits(draws: torch.Tensor, values, probs: torch.Tensor) -> None:
    """``draws [n, F]`` (exact values in ``values``) against ``probs`` over :func:`configurations`."""
    draws = draws.detach()
    assert (draws == draws.round()).all()
    assert torch.isin(draws, torch.tensor(values)).all()
    counts = torch.bincount(config_index(draws, values), minlength=len(probs))
    assert len(counts) == len(probs)
    assert goodness_of_fit(counts, probs) > 1e-3


def joint_probs(spn: RatSPN, values) -> torch.Tensor:
    with torch.no_grad():
        return spn(configurations(values)).exp()


def repetition_posterior(spn: RatSPN, evidence: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        up = spn.upward(evidence[None])
        return (spn.root.log_weights() + up.repetition_log_likelihood[0]).softmax(-1)


def informative_evidence(spn: RatSPN, values, observed=(0,)) -> tuple[torch.Tensor, float]:
    """The evidence (NaN elsewhere) whose repetition posterior is farthest (total variation) from the
    prior."""
    prior = spn.root.log_weights().detach().exp()
    best, best_tv = None, -1.0
    for obs in itertools.product(values, repeat=len(observed)):
        ev = torch.full((spn.num_features,), float("nan"))
        ev[list(observed)] = torch.tensor(obs)
        tv = 0.5 * (repetition_posterior(spn, ev) - prior).abs().sum().item()
        if tv > best_tv:
            best, best_tv = ev, tv
    return best, best_tv


def conditional_probs(spn: RatSPN, values, evidence: torch.Tensor) -> torch.Tensor:
    """Exact conditional over :func:`configurations` (zero where the evidence is contradicted)."""
    configs = configurations(values, spn.num_features)
    observed = ~torch.isnan(evidence)
    consistent = (configs[:, observed] == evidence[observed]).all(-1)
    joint = joint_probs(spn, values) * consistent
    return joint / joint.sum()


def parameter_groups(spn: RatSPN) -> dict[str, torch.Tensor]:
    groups = dict(spn.named_parameters())
    assert "root.logits" in groups and any(k.startswith("inner_layers.") for k in groups)
    assert len([k for k in groups if k.startswith("inner_layers.")]) == spn.depth
    return groups


def assert_all_gradients(spn: RatSPN, loss: torch.Tensor, extra=()) -> list[torch.Tensor]:
    groups = parameter_groups(spn)
    tensors = list(groups.values()) + list(extra)
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    for name, g in zip(list(groups) + [f"extra{i}" for i in range(len(extra))], grads, strict=True):
        assert g is not None, f"{name}: no gradient"
        assert torch.isfinite(g).all(), f"{name}: non-finite gradient"
        assert g.abs().sum() > 0, f"{name}: zero gradient"
    return list(grads)


# --------------------------------------------------------------------------------------------------
# select
# --------------------------------------------------------------------------------------------------
LOGITS = torch.tensor([[1.0, -0.5, 0.3, -2.0], [0.0, 2.0, -1.0, 0.5]])


def test_select_hard_frequencies_follow_softmax():
    torch.manual_seed(0)
    n = 40000
    sel = select(LOGITS.expand(n, 2, 4), "exact")
    assert sel.shape == (n, 2, 4)
    assert ((sel == 0) | (sel == 1)).all() and (sel.sum(-1) == 1).all()
    counts = sel.sum(0)
    probs = LOGITS.softmax(-1)
    for row in range(2):
        assert goodness_of_fit(counts[row], probs[row]) > 1e-3
    # the temperature does not change exact draws
    torch.manual_seed(1)
    a = select(LOGITS.expand(1000, 2, 4), "exact", 1.0)
    torch.manual_seed(1)
    b = select(LOGITS.expand(1000, 2, 4), "exact", 0.01)
    assert torch.equal(a, b)


def test_select_uses_gumbel_noise_and_temperature_divides():
    logits = LOGITS.expand(500, 2, 4)
    for tau in (0.3, 1.0, 2.5):
        torch.manual_seed(2)
        g = gumbel_like(logits)
        torch.manual_seed(2)
        soft = select(logits, "soft", tau)
        torch.testing.assert_close(soft, ((logits + g) / tau).softmax(-1))
        torch.manual_seed(2)
        hard = select(logits, "exact")
        assert torch.equal(hard, torch.nn.functional.one_hot((logits + g).argmax(-1), 4).float())
    # dividing differs from multiplying
    torch.manual_seed(2)
    g = gumbel_like(logits)
    torch.manual_seed(2)
    soft = select(logits, "soft", 2.5)
    assert not torch.allclose(soft, ((logits + g) * 2.5).softmax(-1), atol=1e-3)


def test_select_gumbel_noise_is_standard_gumbel():
    torch.manual_seed(3)
    g = gumbel_like(torch.zeros(20000))
    assert stats.kstest(g.numpy(), stats.gumbel_r.cdf).pvalue > 1e-3


def test_select_soft_rows_on_simplex():
    torch.manual_seed(4)
    for tau in (0.1, 1.0, 10.0):
        soft = select(LOGITS.expand(1000, 2, 4), "soft", tau)
        assert (soft >= 0).all()
        torch.testing.assert_close(soft.sum(-1), torch.ones(1000, 2))
    # large temperature -> uniform, small -> one-hot
    torch.manual_seed(4)
    soft = select(LOGITS.expand(1000, 2, 4), "soft", 1e3)
    torch.testing.assert_close(soft, torch.full_like(soft, 0.25), atol=2e-2, rtol=0)


def test_select_small_temperature_soft_equals_hard_with_the_same_noise():
    logits = LOGITS.expand(5000, 2, 4)
    torch.manual_seed(5)
    hard = select(logits, "exact")
    torch.manual_seed(5)
    soft = select(logits, "soft", 1e-3)
    assert torch.equal(soft.argmax(-1), hard.argmax(-1))
    assert (soft - hard).abs().mean() < 1e-2
    assert ((soft - hard).abs().amax(-1) < 1e-3).double().mean() > 0.98
    torch.manual_seed(5)
    soft_warm = select(logits, "soft", 1.0)
    assert (soft_warm - hard).abs().mean() > 0.1  # the temperature matters


@pytest.mark.parametrize("tau", [0.5, 1.0, 2.0])
def test_select_straight_through_forward_is_hard_gradient_is_soft(tau):
    base = LOGITS.expand(3000, 2, 4).clone()
    w = torch.randn(3000, 2, 4, generator=torch.Generator().manual_seed(6))

    logits = base.clone().requires_grad_()
    torch.manual_seed(7)
    st = select(logits, "straight_through", tau)
    (g_st,) = torch.autograd.grad((w * st).sum(), [logits])

    torch.manual_seed(7)
    hard = select(base, "exact")
    assert torch.equal(st.detach(), hard)  # exactly one-hot, bit for bit
    assert ((st == 0) | (st == 1)).all()
    assert (st.sum(-1) == 1).all()

    logits2 = base.clone().requires_grad_()
    torch.manual_seed(7)
    soft = select(logits2, "soft", tau)
    (g_soft,) = torch.autograd.grad((w * soft).sum(), [logits2])
    torch.testing.assert_close(g_st, g_soft, rtol=1e-6, atol=1e-7)
    assert g_st.abs().sum() > 0


def test_select_learned_temperature_gradient():
    logits = LOGITS.expand(200, 2, 4).double()
    w = torch.randn(200, 2, 4, dtype=torch.double, generator=torch.Generator().manual_seed(8))
    for rule in ("soft", "straight_through"):
        tau = torch.tensor(0.7, dtype=torch.double, requires_grad=True)
        torch.manual_seed(9)
        out = select(logits, rule, tau)
        (g,) = torch.autograd.grad((w * out).sum(), [tau])
        assert torch.isfinite(g) and g != 0
        # central finite difference with the same noise
        h = 1e-6
        vals = []
        for t in (0.7 + h, 0.7 - h):
            torch.manual_seed(9)
            vals.append((w * select(logits, "soft", t)).sum().item())
        torch.testing.assert_close(g.item(), (vals[0] - vals[1]) / (2 * h), rtol=1e-4, atol=1e-6)


def test_select_expected_and_argmax():
    logits = LOGITS.clone().requires_grad_()
    state = torch.random.get_rng_state()
    exp = select(logits, "expected")
    torch.testing.assert_close(exp, LOGITS.softmax(-1))
    arg = select(logits, "argmax")
    assert torch.equal(arg, torch.nn.functional.one_hot(LOGITS.argmax(-1), 4).float())
    assert torch.equal(torch.random.get_rng_state(), state)  # noise-free rules draw nothing
    (g,) = torch.autograd.grad(exp[:, 0].sum(), [logits])
    assert g.abs().sum() > 0
    assert set(ONE_HOT_RULES) <= set(RULES)
    with pytest.raises(ValueError):
        select(LOGITS, "bogus")


def test_conditional_gumbel_selects_index_and_has_the_gumbel_max_law():
    """Drawing the index first and then the Gumbel-perturbed logits conditional on it must give the joint
    law of an unconditional Gumbel-max draw."""
    n = 20000
    log_p = torch.tensor([1.0, -0.5, 0.3, -2.0]).log_softmax(-1).expand(n, 4)
    torch.manual_seed(24)
    index = torch.multinomial(log_p[0].exp(), n, replacement=True)
    z = conditional_gumbel(log_p.clone().requires_grad_(), index)
    assert not z.requires_grad
    assert z.shape == (n, 4) and torch.isfinite(z).all()
    assert torch.equal(z.argmax(-1), index)
    # the maximum is Gumbel(logsumexp log p) = Gumbel(0), independently of the index
    top = z.gather(-1, index[:, None])[:, 0]
    assert stats.kstest(top.numpy(), stats.gumbel_r.cdf).pvalue > 1e-3
    for j in range(4):
        assert stats.kstest(top[index == j].numpy(), stats.gumbel_r.cdf).pvalue > 1e-3 / 4
    # every coordinate has the law of log p_q + Gumbel
    free = log_p + gumbel_like(log_p)
    for q in range(4):
        assert stats.ks_2samp(z[:, q].numpy(), free[:, q].numpy()).pvalue > 1e-3 / 4
    # a category of small probability can be imposed as well
    rare = conditional_gumbel(log_p[:100], torch.full((100,), 3))
    assert (rare.argmax(-1) == 3).all()


# --------------------------------------------------------------------------------------------------
# circuit samplers: goodness of fit
# --------------------------------------------------------------------------------------------------
N_GOF = 25000


@pytest.mark.parametrize("structure", list(STRUCTURES))
@pytest.mark.parametrize("leaf_name", list(LEAVES))
def test_circuit_samplers_match_log_prob(leaf_name, structure):
    factory, values = LEAVES[leaf_name]
    depth, reps, sums, leaves = STRUCTURES[structure]
    spn = make_spn(factory(), depth, reps, sums, leaves, seed=3)
    probs = joint_probs(spn, values)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert probs.max() < 0.8 and (probs > 0.01).sum() >= 4  # not degenerate

    torch.manual_seed(11)
    assert_fits(SPNDistribution(spn).sample((N_GOF,)), values, probs)
    for interpolation in ("unit", "region"):
        torch.manual_seed(12)
        d = SPNDistribution(spn, temperature=0.6, hard=True, interpolation=interpolation)
        x = d.rsample((N_GOF,))
        assert x.requires_grad
        assert_fits(x, values, probs)


def test_circuit_sampler_fits_with_two_channels():
    """event_shape (C, H, W) = (2, 1, 2): a leaf component is a product over its channels."""
    spn = RatSPN((2, 1, 2), depth=1, num_repetitions=2, num_sums=2, num_leaves=2, leaf=Bernoulli(), seed=4)
    with torch.no_grad():
        spn.leaf_layer.logits.mul_(4.0)
        spn.root.logits.copy_(torch.tensor([0.8, -0.8]))
    configs = configurations([0.0, 1.0], 4)
    probs = spn(configs.reshape(-1, 2, 1, 2)).exp().detach()
    torch.manual_seed(13)
    for x in (SPNDistribution(spn).sample((N_GOF,)), SPNDistribution(spn, interpolation="region").rsample((N_GOF,))):
        assert x.shape == (N_GOF, 2, 1, 2)
        assert_fits(x.reshape(N_GOF, 4), [0.0, 1.0], probs)


# --------------------------------------------------------------------------------------------------
# conditional sampling
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("leaf_name", ["bernoulli", "categorical"])
def test_conditional_samples_match_exact_conditional(leaf_name):
    factory, values = LEAVES[leaf_name]
    spn = make_spn(factory(), 2, 3, 3, 2, seed=5)
    evidence, tv = informative_evidence(spn, values, observed=(0,))
    assert tv > 0.1, "the evidence must move the repetition posterior away from the prior"
    exact = conditional_probs(spn, values, evidence)

    d = SPNDistribution(spn)
    cond = d.condition(evidence)
    # the conditional log_prob agrees with joint / marginal by enumeration
    support = exact > 0
    lp = cond.log_prob(configurations(values)[support])
    torch.testing.assert_close(lp.exp(), exact[support], atol=1e-5, rtol=1e-4)

    n = 20000
    torch.manual_seed(14)
    draws = cond.sample((n,))
    assert draws.shape == (n, 3)
    assert torch.equal(draws[:, 0], evidence[0].expand(n))
    assert_fits(draws, values, exact)
    for interpolation in ("unit", "region"):
        torch.manual_seed(15)
        x = SPNDistribution(spn, hard=True, interpolation=interpolation).condition(evidence).rsample((n,))
        assert torch.equal(x.detach()[:, 0], evidence[0].expand(n))
        assert_fits(x, values, exact)


def test_conditional_samples_batched_evidence():
    factory, values = LEAVES["bernoulli"]
    spn = make_spn(factory(), 2, 3, 3, 2, seed=6)
    evidence = torch.tensor([[float("nan"), 1.0, float("nan")], [0.0, float("nan"), 1.0]])
    n = 20000
    torch.manual_seed(16)
    draws = SPNDistribution(spn).condition(evidence).sample((n,))
    assert draws.shape == (n, 2, 3)
    for b in range(2):
        observed = ~torch.isnan(evidence[b])
        assert torch.equal(draws[:, b][:, observed], evidence[b][observed].expand(n, -1))
        assert_fits(draws[:, b], values, conditional_probs(spn, values, evidence[b]))


# --------------------------------------------------------------------------------------------------
# differentiable samples: gradients
# --------------------------------------------------------------------------------------------------
GRAD_LEAVES = {
    "normal": lambda: Normal(),
    "bernoulli": lambda: Bernoulli(),
    "categorical": lambda: Categorical(num_categories=3),
    "binomial": lambda: Binomial(total_count=4),
}


@pytest.mark.parametrize("interpolation", ["unit", "region"])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("leaf_name", list(GRAD_LEAVES))
def test_rsample_gradients_reach_every_parameter_and_temperature(leaf_name, hard, interpolation):
    spn = make_spn(GRAD_LEAVES[leaf_name](), 2, 3, 3, 2, seed=7)
    tau = torch.tensor(0.7, requires_grad=True)
    d = SPNDistribution(spn, temperature=tau, hard=hard, interpolation=interpolation)
    torch.manual_seed(17)
    x = d.rsample((256,))
    assert x.shape == (256, 3)
    assert torch.isfinite(x).all()
    if hard and leaf_name != "normal":
        assert (x == x.round()).all() and spn.leaf.support.check(x.detach()).all()
    c = torch.tensor([1.0, -2.0, 0.5])
    loss = ((x - 0.3) ** 2 * c).sum()
    groups = parameter_groups(spn)
    grads = torch.autograd.grad(loss, list(groups.values()) + [tau])
    for name, g in zip(list(groups) + ["temperature"], grads, strict=True):
        assert torch.isfinite(g).all(), name
        if hard and name == "temperature":
            continue  # only finiteness is required of the straight-through temperature gradient
        assert g.abs().sum() > 0, name


@pytest.mark.parametrize("interpolation", ["unit", "region"])
@pytest.mark.parametrize("leaf_name", ["normal", "bernoulli", "categorical"])
def test_soft_rsample_gradient_matches_finite_differences(leaf_name, interpolation):
    """Given the noise, a soft sample is a smooth function of the parameters and the temperature."""
    spn = make_spn(GRAD_LEAVES[leaf_name](), 2, 2, 2, 2, seed=8).double()
    c = torch.tensor([0.7, -1.3, 2.0], dtype=torch.double)

    def f(tau):
        torch.manual_seed(18)
        d = SPNDistribution(spn, temperature=tau, hard=False, interpolation=interpolation)
        return (torch.sin(d.rsample((64,))) * c).sum()

    tau = torch.tensor(0.8, dtype=torch.double, requires_grad=True)
    targets = [tau, spn.root.logits, spn.inner_layers[0].logits, spn.inner_layers[1].logits]
    targets += list(spn.leaf_layer.parameters())
    grads = torch.autograd.grad(f(tau), targets)
    h = 1e-6
    with torch.no_grad():
        fd_tau = (f(torch.tensor(0.8 + h, dtype=torch.double)) - f(torch.tensor(0.8 - h, dtype=torch.double)))
        torch.testing.assert_close(grads[0], fd_tau / (2 * h), rtol=1e-4, atol=1e-6)
        for p, g in zip(targets[1:], grads[1:], strict=True):
            flat = p.view(-1)
            for i in (0, flat.numel() // 2, flat.numel() - 1):
                old = flat[i].item()
                flat[i] = old + h
                up = f(torch.tensor(0.8, dtype=torch.double))
                flat[i] = old - h
                down = f(torch.tensor(0.8, dtype=torch.double))
                flat[i] = old
                torch.testing.assert_close(g.reshape(-1)[i], (up - down) / (2 * h), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("interpolation", ["unit", "region"])
def test_straight_through_gradient_of_linear_function_is_unbiased_for_leaf_means(interpolation):
    spn = make_spn(Normal(), 2, 3, 3, 2, seed=9)
    c = torch.tensor([1.5, -0.7, 0.4])
    d = SPNDistribution(spn, temperature=0.8, hard=True, interpolation=interpolation)
    (exact,) = torch.autograd.grad((c * d.mean).sum(), [spn.leaf_layer.loc])

    n = 40000
    torch.manual_seed(19)
    x = d.rsample((n,))
    (mc,) = torch.autograd.grad((c * x).sum() / n, [spn.leaf_layer.loc])
    # per component: c_v * (fraction of samples whose variable v came from that component)
    cv = c.reshape(1, 3, 1, 1).expand_as(exact)
    pi = exact / cv
    assert (pi >= -1e-6).all() and (pi <= 1 + 1e-6).all()
    torch.testing.assert_close(pi.sum((2, 3)), torch.ones(1, 3))  # every variable has one component
    tol = 5 * cv.abs() * (pi.clamp(0, 1) * (1 - pi.clamp(0, 1)) / n).sqrt() + 1e-4
    assert ((mc - exact).abs() <= tol).all(), (mc - exact).abs().max()
    assert (exact.abs() > 1e-3).sum() >= 6  # a non-trivial check


@pytest.mark.parametrize("interpolation", ["unit", "region"])
def test_straight_through_leaf_gradient_is_the_coupled_relaxation(interpolation):
    """A straight-through Normal value x of variable v comes from one component (i, r); its gradient is
    that of loc + scale * eps at eps = (x - loc) / scale: d x / d loc = 1, d x / d scale = eps (and 0
    for every other component)."""
    spn = make_spn(Normal(), 2, 3, 3, 2, seed=14)
    d = SPNDistribution(spn, temperature=0.8, hard=True, interpolation=interpolation)
    scale = spn.leaf_layer.params()["scale"].detach()
    loc = spn.leaf_layer.loc.detach()
    torch.manual_seed(23)
    for _ in range(10):
        x = d.rsample((1,))[0]
        for v in range(3):
            g_loc, g_raw = torch.autograd.grad(x[v], [spn.leaf_layer.loc, spn.leaf_layer.raw_scale], retain_graph=True)
            selected = g_loc != 0
            assert selected.sum() == 1 and g_loc[selected].item() == 1.0
            assert selected[0, v].any()  # a component of variable v
            eps = (x[v].detach() - loc[selected]) / scale[selected]
            slope = torch.sigmoid(spn.leaf_layer.raw_scale.detach()[selected])  # d scale / d raw_scale
            torch.testing.assert_close(g_raw[selected], eps * slope, rtol=1e-4, atol=1e-5)
            assert (g_raw[~selected] == 0).all()


def _reference_straight_through_selection(spn: RatSPN, n: int, tau: float) -> torch.Tensor:
    """The paper's per-unit straight-through top-down pass, written with ``select`` alone: every sum unit
    draws its own Gumbel-Softmax straight-through selection and a region's selection is Σ_k s_k · y_k."""
    s = select(spn.root.log_weights().expand(n, spn.num_repetitions), "straight_through", tau)[:, :, None, None]
    for layer in reversed(spn.inner_layers):
        log_w = layer.log_weights()
        y = select(log_w.expand((n,) + log_w.shape), "straight_through", tau)
        pairs = torch.einsum("nrlk,nrlkq->nrlq", s, y).unflatten(-1, (layer.num_inputs, layer.num_inputs))
        s = torch.stack([pairs.sum(-1), pairs.sum(-2)], dim=3).flatten(2, 3)
    return s


def test_straight_through_unit_sampler_is_the_per_unit_estimator_in_law():
    """The circuit's straight-through ``"unit"`` pass must give the per-unit Gumbel-Softmax straight-through
    gradient in expectation (every parameter group), and the same sample law."""
    spn = make_spn(Normal(), 2, 2, 3, 2, seed=15)
    tau = 0.7
    c = torch.tensor([1.0, -1.5, 0.8])
    params = list(spn.parameters())
    batches, n = 16, 800

    def batch_grads(draw):
        out = []
        for _ in range(batches):
            x = draw()
            loss = (c * torch.sin(x)).sum() / n
            out.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(out)

    torch.manual_seed(25)
    d = SPNDistribution(spn, temperature=tau, hard=True, interpolation="unit")
    ours = batch_grads(lambda: d.rsample((n,)))
    torch.manual_seed(26)
    ref = batch_grads(lambda: leaf_values(spn.leaf_layer, _reference_straight_through_selection(spn, n, tau),
                                          "straight_through", tau).reshape(n, 3))
    diff = ours.mean(0) - ref.mean(0)
    se = ((ours.var(0) + ref.var(0)) / batches).sqrt()
    assert (ref.mean(0).abs() > 10 * se).sum() >= 10  # the check is informative
    assert (diff.abs() <= 5 * se + 1e-5).all(), (diff.abs() / (se + 1e-12)).max()


def test_soft_samples_concentrate_on_corners_as_temperature_vanishes():
    factory, values = LEAVES["bernoulli"]
    spn = make_spn(factory(), 2, 3, 3, 2, seed=10)
    mean = SPNDistribution(spn).mean
    fractions = []
    for tau in (1.0, 0.2, 0.01):
        torch.manual_seed(20)
        x = SPNDistribution(spn, temperature=tau, hard=False).rsample((20000,)).detach()
        assert ((x >= -1e-6) & (x <= 1 + 1e-6)).all()
        fractions.append(((x < 1e-2) | (x > 1 - 1e-2)).double().mean().item())
        if tau == 0.01:
            assert ((x.mean(0) - mean).abs() < 0.03).all()
            assert_fits(x.round(), values, joint_probs(spn, values))
    assert fractions[0] < 0.5 and fractions[0] < fractions[1] < fractions[2]
    assert fractions[2] > 0.93


def test_soft_sample_mean_is_finite():
    spn = make_spn(Normal(), 2, 3, 3, 2, seed=11)
    torch.manual_seed(21)
    x = SPNDistribution(spn, temperature=0.5, hard=False).rsample((50000,))
    assert torch.isfinite(x).all() and torch.isfinite(x.mean(0)).all()
    # soft samples of a Normal-leaf circuit stay close to its mean (within a few leaf spreads)
    assert ((x.mean(0) - SPNDistribution(spn).mean).abs() < 3.0).all()


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hard", [False, True])
def test_sample_shapes(hard):
    spn = make_spn(Categorical(num_categories=3), 1, 2, 2, 2, seed=12)
    d = SPNDistribution(spn, hard=hard)
    assert d.sample().shape == (3,)
    assert d.sample((2, 3)).shape == (2, 3, 3)
    assert d.rsample((2, 3)).shape == (2, 3, 3)
    e = d.expand((4,))
    assert e.batch_shape == (4,)
    assert e.sample((2,)).shape == (2, 4, 3)
    assert e.rsample((2, 5)).shape == (2, 5, 4, 3)
    assert e.log_prob(e.sample((2,))).shape == (2, 4)
    ev = torch.tensor([[1.0, float("nan"), float("nan")]]).expand(4, 3)
    cond = d.condition(ev)
    assert cond.batch_shape == (4,)
    x = cond.rsample((2, 3))
    assert x.shape == (2, 3, 4, 3)
    assert (x.detach()[..., 0] == 1).all()


# --------------------------------------------------------------------------------------------------
# evidence + rsample
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("interpolation", ["unit", "region"])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("leaf_name", ["normal", "bernoulli", "binomial"])
def test_conditional_rsample_keeps_evidence_and_has_gradients(leaf_name, hard, interpolation):
    spn = make_spn(GRAD_LEAVES[leaf_name](), 2, 3, 3, 2, seed=13)
    value = 0.8 if leaf_name == "normal" else 1.0
    evidence = torch.tensor([[value, float("nan"), float("nan")], [float("nan"), float("nan"), 0.0]])
    tau = torch.tensor(0.7, requires_grad=True)
    d = SPNDistribution(spn, temperature=tau, hard=hard, interpolation=interpolation)
    torch.manual_seed(22)
    x = d.condition(evidence).rsample((128,))
    assert x.shape == (128, 2, 3)
    observed = ~torch.isnan(evidence)
    assert torch.equal(x.detach()[:, observed], evidence[observed].expand(128, -1))
    assert torch.isfinite(x).all()
    if hard and leaf_name != "normal":
        assert spn.leaf.support.check(x.detach()).all()
    loss = ((x - 0.3) ** 2).sum()
    assert_all_gradients(spn, loss, extra=[tau] if not hard else [])
    # the missing entries carry the gradient, the observed ones none
    x2 = d.condition(evidence).rsample((4,))
    probe = torch.zeros_like(x2, requires_grad=False)
    probe[:, observed] = 1.0
    grads = torch.autograd.grad((x2 * probe).sum(), list(spn.parameters()), allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads)
