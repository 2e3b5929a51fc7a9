"""Objectives: each lowers its own loss on small data, its gradients reach the circuit and a learned τ,
its own inner updates (discriminator, kernel encoder) run as configured, and MMD² is a correct estimator."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyro_spn import RatSPN, SPNDistribution
from pyro_spn.joint import JointSPN
from pyro_spn.leaves import Binomial, Normal
from pyro_spn.nets import DCGANDiscriminator, MLPDiscriminator, MLPEncoder
from pyro_spn.objectives import (
    OBJECTIVES,
    AdversarialObjective,
    AutoEncodingObjective,
    HybridObjective,
    LikelihoodObjective,
    MMDObjective,
    Objective,
    likelihood_model,
    make_objective,
    mmd2,
)
from pyro_spn.temperature import LearnedTemperature

NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The tensors here are tiny: intra-op threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    pyro.set_rng_seed(0)


def two_clusters(n: int = 256, seed: int = 0) -> torch.Tensor:
    """``[n, 2]``: two isotropic Gaussian clusters at ``±(2, 2)``, standard deviation 0.3."""
    generator = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    return centers[torch.arange(n) % 2] + 0.3 * torch.randn(n, 2, generator=generator)


def small_spn(seed: int = 0) -> RatSPN:
    return RatSPN((2,), depth=1, num_repetitions=2, num_sums=4, num_leaves=4, leaf=Normal(), seed=seed)


def small_digits() -> torch.Tensor:
    """``[256, 1, 4, 4]`` Binomial(16) counts: scikit-learn's 8×8 digits averaged over 2×2 blocks."""
    from sklearn.datasets import load_digits

    images = torch.tensor(load_digits().images[:256], dtype=torch.float32)[:, None]
    return F.avg_pool2d(images, 2).round()


def train(objective: Objective, spn: RatSPN, x: torch.Tensor, steps: int, *, lr: float = 0.05,
          auxiliary: bool = True, batch: int = 64, tau: float = 0.5) -> list[float]:
    """A minimal trainer: the losses of ``steps`` Adam steps on random batches of ``x``."""
    optimizer = torch.optim.Adam(spn.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        d = SPNDistribution(spn, temperature=tau, hard=False)
        x_batch = x[torch.randint(0, x.shape[0], (batch,))]
        if auxiliary:
            objective.auxiliary_step(d, x_batch)
        loss = objective.loss(d, x_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def yardstick(spn: RatSPN, x: torch.Tensor) -> float:
    """The fixed-kernel MMD² between ``x`` and 4096 exact samples of the circuit (common random numbers; many
    samples, so that the sampler's noise does not decide whether training helped)."""
    torch.manual_seed(123)
    with torch.no_grad():
        return float(mmd2(x, SPNDistribution(spn).sample((4096,))))


# -- mmd2 -------------------------------------------------------------------------------------------------
def brute_force_mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths, unbiased: bool) -> float:
    def k(a, b):
        return sum(math.exp(-float((a - b).pow(2).sum()) / (2 * s * s)) for s in bandwidths)

    n, m = len(x), len(y)
    pairs = [(i, j) for i in range(n) for j in range(n) if not unbiased or i != j]
    kxx = sum(k(x[i], x[j]) for i, j in pairs) / len(pairs)
    pairs = [(i, j) for i in range(m) for j in range(m) if not unbiased or i != j]
    kyy = sum(k(y[i], y[j]) for i, j in pairs) / len(pairs)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("unbiased", [True, False])
def test_mmd2_matches_the_definition(unbiased):
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 0.5
    bandwidths = (0.5, 1.0, 3.0)
    expected = brute_force_mmd2(x, y, bandwidths, unbiased)
    assert float(mmd2(x, y, bandwidths, unbiased=unbiased)) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_mmd2_of_identical_samples():
    x = torch.randn(50, 4)
    assert float(mmd2(x, x, unbiased=False)) == pytest.approx(0.0, abs=1e-5)
    # unbiased: zero in expectation for two samples of one distribution
    estimates = torch.stack([mmd2(torch.randn(32, 2), torch.randn(32, 2)) for _ in range(200)])
    assert abs(float(estimates.mean())) < 3 * float(estimates.std()) / math.sqrt(200)
    assert float(estimates.abs().mean()) < 0.05


def test_mmd2_is_symmetric_positive_and_grows_with_the_shift():
    x = torch.randn(128, 2)
    noise = torch.randn(128, 2)
    values = [float(mmd2(x, noise + shift)) for shift in (0.5, 1.0, 2.0, 4.0)]
    assert values[0] > 0
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    y = noise + 1.0
    assert float(mmd2(x, y)) == pytest.approx(float(mmd2(y, x)), rel=1e-5)


def test_mmd2_flattens_images_and_passes_gradients():
    x, y = torch.rand(5, 1, 3, 3), torch.rand(7, 9, requires_grad=True)
    value = mmd2(x, y)
    value.backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


@pytest.mark.parametrize("call, match", [
    (lambda: mmd2(torch.rand(4, 2), torch.rand(4, 3)), "same number of entries"),
    (lambda: mmd2(torch.rand(1, 2), torch.rand(4, 2)), "at least 2"),
    (lambda: mmd2(torch.rand(4, 2), torch.rand(4, 2), bandwidths=(1.0, 0.0)), "bandwidths"),
    (lambda: mmd2(torch.rand(4, 2), torch.rand(4, 2), bandwidths=()), "bandwidths"),
])
def test_mmd2_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# -- likelihood ---------------------------------------------------------------------------------------
def test_likelihood_loss_is_the_mean_nll_and_decreases():
    x = two_clusters()
    spn = small_spn()
    d = SPNDistribution(spn)
    expected = float(-d.log_prob(x).mean().detach())
    assert float(LikelihoodObjective().loss(d, x).detach()) == pytest.approx(expected)
    losses = train(LikelihoodObjective(), spn, x, 40)
    assert mean(losses[-5:]) < mean(losses[:5]) - 1.0


def test_svi_on_the_likelihood_model_is_the_nll_and_trains():
    x = two_clusters(128)
    spn = small_spn()
    d = SPNDistribution(spn)
    pyro.clear_param_store()
    svi = SVI(likelihood_model, lambda d, x: None, Adam({"lr": 0.05}), Trace_ELBO())
    nll = float(-d.log_prob(x).sum().detach())
    assert svi.evaluate_loss(d, x) == pytest.approx(nll, rel=1e-5)
    losses = [svi.step(d, x) for _ in range(40)]
    assert losses[0] == pytest.approx(nll, rel=1e-5)
    assert losses[-1] < losses[0] - 100
    assert float(-d.log_prob(x).sum().detach()) == pytest.approx(svi.evaluate_loss(d, x), rel=1e-5)
    pyro.clear_param_store()


# -- adversarial -------------------------------------------------------------------------------------
def adversarial(**kwargs) -> AdversarialObjective:
    return AdversarialObjective(MLPDiscriminator(2, hidden=(32, 32)), **kwargs)


def test_adversarial_discriminator_learns_and_generator_fools_a_frozen_critic():
    x = two_clusters()
    spn = small_spn()
    objective = adversarial(lr=1e-2)
    d = SPNDistribution(spn, temperature=0.5, hard=False)
    critic = [objective.auxiliary_step(d, x[:64])["discriminator_loss"] for _ in range(60)]
    assert mean(critic[-5:]) < mean(critic[:5]) - 0.2
    assert all(p.grad is None for p in objective.discriminator.parameters())  # auxiliary_step leaves none
    before = [p.detach().clone() for p in objective.discriminator.parameters()]
    losses = train(objective, spn, x, 40, auxiliary=False)  # the critic is frozen from here on
    assert mean(losses[-5:]) < mean(losses[:5]) - 0.3
    after = list(objective.discriminator.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert all(p.grad is None for p in after)  # loss() builds no gradient for the critic


def test_adversarial_training_moves_the_circuit_towards_the_data():
    x = two_clusters()
    spn = small_spn()
    start = yardstick(spn, x)
    train(adversarial(lr=1e-2), spn, x, 60)
    assert yardstick(spn, x) < 0.8 * start


@pytest.mark.parametrize("steps", [1, 3])
def test_discriminator_steps_per_generator_step(steps):
    objective = adversarial(discriminator_steps=steps)
    count = [0]
    objective.optimizer.register_step_post_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    d = SPNDistribution(small_spn(), hard=False)
    for calls in range(1, 4):
        metrics = objective.auxiliary_step(d, two_clusters(16))
        assert count[0] == calls * steps
    assert set(metrics) == {"discriminator_loss", "d_real", "d_fake"}
    objective.loss(d, two_clusters(16))
    assert count[0] == 3 * steps


def test_adversarial_scales_the_data_before_the_discriminator():
    seen = []

    class Recorder(MLPDiscriminator):
        def forward(self, x):
            seen.append(x.detach())
            return super().forward(x)

    objective = AdversarialObjective(Recorder(2), scale=4.0)
    objective.logits(torch.full((3, 2), 8.0))
    assert torch.equal(seen[0], torch.full((3, 2), 2.0))


def test_adversarial_on_images():
    spn = RatSPN((1, 8, 8), depth=2, num_repetitions=2, num_sums=3, num_leaves=3, leaf=Binomial(16), seed=0)
    objective = AdversarialObjective(DCGANDiscriminator((1, 8, 8), base_channels=8), scale=16.0)
    d = SPNDistribution(spn, temperature=0.5, hard=False)
    x = torch.randint(0, 17, (8, 1, 8, 8)).float()
    assert math.isfinite(objective.auxiliary_step(d, x)["discriminator_loss"])
    objective.loss(d, x).backward()
    assert spn.leaf_layer.logits.grad.abs().sum() > 0


# -- mmd -----------------------------------------------------------------------------------------------------
def test_fixed_kernel_mmd_decreases():
    x = two_clusters()
    spn = small_spn()
    losses = train(MMDObjective(), spn, x, 40)
    assert mean(losses[-5:]) < 0.7 * mean(losses[:5])
    assert MMDObjective().auxiliary_step(SPNDistribution(spn), x) == {}


def test_fixed_kernel_mmd_scales_the_data():
    x, y = torch.rand(6, 2) * 255, torch.rand(6, 2) * 255
    assert float(MMDObjective(scale=255.0).distance(x, y)) == pytest.approx(float(mmd2(x / 255, y / 255)))


def test_learned_kernel_encoder_ascends_and_generator_descends_against_it():
    x = two_clusters()
    spn = small_spn()
    objective = MMDObjective(encoder=MLPEncoder(2, 8, hidden=(32, 32)), encoder_lr=1e-2)
    d = SPNDistribution(spn, temperature=0.5, hard=False)
    ascent = [objective.auxiliary_step(d, x[:64])["encoder_mmd2"] for _ in range(30)]
    assert mean(ascent[-5:]) > mean(ascent[:5]) + 0.3
    losses = train(objective, spn, x, 40, auxiliary=False)
    assert mean(losses[-5:]) < 0.5 * mean(losses[:5])
    assert all(p.grad is None for p in objective.encoder.parameters())


@pytest.mark.parametrize("steps", [1, 2])
def test_encoder_steps_per_generator_step(steps):
    objective = MMDObjective(encoder=MLPEncoder(2, 4), encoder_steps=steps)
    count = [0]
    objective.optimizer.register_step_post_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    d = SPNDistribution(small_spn(), hard=False)
    objective.auxiliary_step(d, two_clusters(16))
    objective.auxiliary_step(d, two_clusters(16))
    assert count[0] == 2 * steps


def test_optimizer_state_is_part_of_the_objective_state_dict():
    objective = adversarial()
    objective.auxiliary_step(SPNDistribution(small_spn(), hard=False), two_clusters(16))
    state = objective.state_dict()
    resumed = adversarial()
    resumed.load_state_dict(state)
    assert resumed.optimizer.state_dict()["state"][0]["step"] == 1
    for a, b in zip(objective.discriminator.parameters(), resumed.discriminator.parameters(), strict=True):
        assert torch.equal(a, b)


# -- gradients reach the circuit and a learned temperature -------------------------------------------------
@pytest.mark.parametrize("name, options", [("ll", {}), ("adv", {}), ("mmd", {}), ("mmd", {"kernel": "learned"})])
def test_gradients_reach_leaves_sum_weights_and_a_learned_temperature(name, options):
    spn = small_spn()
    tau = LearnedTemperature()
    objective = make_objective(name, event_shape=(2,), **options)
    d = SPNDistribution(spn, temperature=tau(), hard=False)
    objective.loss(d, two_clusters(32)).backward()
    for param_name, p in spn.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, param_name
    if name == "ll":
        assert tau.raw.grad is None  # the likelihood does not depend on τ
    else:
        assert tau.raw.grad is not None and torch.isfinite(tau.raw.grad) and float(tau.raw.grad) != 0


# -- hybrid ---------------------------------------------------------------------------------------------
def test_hybrid_adds_the_weighted_nll_and_delegates():
    x = two_clusters(32)
    spn = small_spn()
    d = SPNDistribution(spn, temperature=0.5, hard=False)
    base = MMDObjective()
    hybrid = HybridObjective(base, nll_weight=0.1)
    torch.manual_seed(1)
    expected = float(base.loss(d, x).detach()) + 0.1 * float(-d.log_prob(x).mean().detach())
    torch.manual_seed(1)
    assert float(hybrid.loss(d, x).detach()) == pytest.approx(expected, rel=1e-5)
    assert hybrid.name == "mmd+ll"
    adv = HybridObjective(adversarial(discriminator_steps=2), nll_weight=1.0)
    count = [0]
    adv.base.optimizer.register_step_post_hook(lambda *_: count.__setitem__(0, count[0] + 1))
    adv.auxiliary_step(d, x)
    assert count[0] == 2


def test_hybrid_errors():
    with pytest.raises(ValueError, match="nll_weight"):
        HybridObjective(MMDObjective(), nll_weight=-1.0)
    with pytest.raises(TypeError, match="base"):
        HybridObjective(torch.nn.Linear(2, 2), nll_weight=1.0)


# -- make_objective -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, cls", [("ll", LikelihoodObjective), ("adv", AdversarialObjective),
                                       ("mmd", MMDObjective), ("pae", AutoEncodingObjective)])
def test_make_objective_by_name(name, cls):
    objective = make_objective(name, event_shape=(1, 8, 8))
    assert isinstance(objective, cls) and objective.name == name
    assert name in OBJECTIVES


def test_make_objective_options():
    mmd = make_objective("mmd", event_shape=(2,), kernel="learned", encoder_features=5, encoder_lr=0.01, scale=2.0)
    assert mmd.encoder(torch.rand(3, 2)).shape == (3, 5) and mmd.scale == 2.0
    assert mmd.optimizer.param_groups[0]["lr"] == 0.01
    adv = make_objective("adv", event_shape=(3, 32, 32), discriminator_steps=2)
    assert isinstance(adv.discriminator, DCGANDiscriminator) and adv.discriminator_steps == 2
    hybrid = make_objective("adv", event_shape=(2,), nll_weight=0.5)
    assert isinstance(hybrid, HybridObjective) and hybrid.nll_weight == 0.5


@pytest.mark.parametrize("call, error, match", [
    (lambda: make_objective("gan", event_shape=(2,)), ValueError, "ll.*adv.*mmd.*pae"),
    (lambda: make_objective("adv", event_shape=(2,), encoder_lr=0.1), TypeError, "encoder_lr"),
    (lambda: make_objective("ll", event_shape=(2,), scale=2.0), TypeError, "scale"),
    (lambda: make_objective("mmd", event_shape=(2,), kernel="gaussian"), ValueError, "kernel"),
    (lambda: make_objective("ll", event_shape=(2,), nll_weight=1.0), ValueError, "nll_weight"),
    (lambda: AdversarialObjective(MLPDiscriminator(2), lr=0.0), ValueError, "lr"),
    (lambda: AdversarialObjective(MLPDiscriminator(2), betas=(0.5, 1.0)), ValueError, "betas"),
    (lambda: AdversarialObjective(MLPDiscriminator(2), discriminator_steps=0), ValueError, "discriminator_steps"),
    (lambda: AdversarialObjective("net"), TypeError, "discriminator"),
    (lambda: MMDObjective(encoder_lr=-1.0), ValueError, "encoder_lr"),
    (lambda: MMDObjective(scale=0), ValueError, "scale"),
])
def test_bad_arguments_are_named(call, error, match):
    with pytest.raises(error, match=match):
        call()


# -- probabilistic auto-encoding ----------------------------------------------------------------------
def pae_setup(latent_dim: int = 2, seed: int = 0) -> tuple[AutoEncodingObjective, JointSPN]:
    objective = AutoEncodingObjective(reconstruction="bce", scale=16.0)
    model = JointSPN((1, 4, 4), Binomial(total_count=16), Normal(), latent_dim, depth=2, num_repetitions=2,
                     num_sums=4, num_leaves=4, seed=seed)
    return objective, model


def train_pae(objective: Objective, model: JointSPN, x: torch.Tensor, steps: int) -> list[float]:
    """Adam steps on random batches of ``x`` through the joint's soft decoder; the losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = []
    for _ in range(steps):
        loss = objective.loss(model.distribution(temperature=0.5, hard=False), x[torch.randint(0, x.shape[0], (64,))])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


def test_pae_scores_the_decoded_encoding():
    objective, model = pae_setup(latent_dim=3)
    d = model.distribution(temperature=0.5, hard=False)  # the objective's default estimator: soft
    x = small_digits()[:5]
    torch.manual_seed(3)
    loss = objective.loss(d, x)
    torch.manual_seed(3)
    expected = objective.reconstruction_error(d.decode(d.encode(x)), x).mean()
    assert torch.equal(loss, expected)


def test_pae_bce_is_finite_at_the_pixel_bounds_and_matches_the_definition():
    objective = AutoEncodingObjective(scale=16.0)
    x = torch.tensor([16.0, 0.0, 8.0, 4.0]).reshape(1, 1, 2, 2)
    x_hat = torch.tensor([[0.0, 16.0, 4.0, 4.0]], requires_grad=True)  # two pixels wrong at the bounds
    error = objective.reconstruction_error(x_hat.reshape(1, 1, 2, 2), x)
    assert error.shape == (1,) and torch.isfinite(error).all()
    expected = F.binary_cross_entropy(torch.tensor([1e-6, 1 - 1e-6, 0.25, 0.25]), torch.tensor([1, 0, 0.5, 0.25]),
                                      reduction="sum")
    assert float(error.detach()) == pytest.approx(float(expected), rel=1e-4)
    error.sum().backward()
    grad = x_hat.grad[0]
    assert torch.isfinite(grad).all()
    assert grad[0] < 0 and grad[1] > 0 and grad[2] < 0  # the clamp passes the gradient at the bounds
    assert grad[3] == pytest.approx(0.0, abs=1e-6)


def test_pae_loss_decreases_and_reaches_latents_leaves_and_weights():
    x = small_digits()
    objective, model = pae_setup()
    objective.loss(model.distribution(temperature=0.5, hard=False), x[:32]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    layer = model.spn.leaf_layer
    assert layer.g1_loc.grad.abs().sum() > 0  # through the encoding z
    assert layer.g0_logits.grad.abs().sum() > 0
    assert all(layer.logits.grad.abs().sum() > 0 for layer in model.spn.inner_layers)
    losses = train_pae(objective, model, x, 40)
    assert mean(losses[-5:]) < 0.85 * mean(losses[:5])


def test_pae_mse_for_real_valued_data():
    objective = AutoEncodingObjective(reconstruction="mse")
    model = JointSPN((2,), Normal(), Normal(), 1, depth=1, num_repetitions=2, num_sums=4, num_leaves=4)
    losses = train_pae(objective, model, two_clusters(), 40)
    assert all(math.isfinite(v) for v in losses)
    assert mean(losses[-5:]) < mean(losses[:5])


def test_pae_errors():
    with pytest.raises(ValueError, match="reconstruction"):
        AutoEncodingObjective(reconstruction="l1")
    with pytest.raises(ValueError, match="scale"):
        AutoEncodingObjective(scale=0.0)
    with pytest.raises(TypeError, match="encode and decode"):
        AutoEncodingObjective().loss(SPNDistribution(small_spn()), two_clusters(4))
