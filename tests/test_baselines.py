"""Neural baselines (VAE, GAN and MMD-GAN generators): parameter budgets, likelihood bounds, sample support,
gradients, and training them with the trainer and the CLI (small configs, a few batches)."""

import dataclasses
import json
import math

import h5py
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyro_spn.leaves import Bernoulli, Binomial, Normal
from pyro_spn.nets import VAE, Generator
from pyro_spn.objectives import make_objective
from pyro_spn.train import TrainConfig, Trainer
from pyro_spn.train.checkpoint import load_checkpoint
from pyro_spn.train.cli import sample, train
from pyro_spn.train.config import MODEL_DEFAULTS
from pyro_spn.train.model import DataInfo, Model, spn_num_parameters
from pyro_spn.train.pictures import histogram_log_density
from pyro_spn.train.sample import SavedRun

DIGITS = DataInfo("digits", (1, 8, 8), Binomial(total_count=16), True, 10)
MOONS = DataInfo("2-moons", (2,), Normal(), False, 2)
SHAPES = [((1, 8, 8), Binomial(total_count=16)), ((1, 28, 28), Binomial(total_count=255)),
          ((3, 32, 32), Binomial(total_count=255)), ((2,), Normal()), ((1, 28, 28), Bernoulli())]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def one_thread():
    """The nets here are tiny: one thread is faster than several (and than several competing for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small(tmp_path, model: str, dataset: str = "digits", name: str = "run", **changes) -> TrainConfig:
    """A baseline run with a circuit budget of a few thousand parameters, 2 batches per epoch."""
    knobs = dict(depth=2, num_repetitions=2) if dataset == "digits" else dict(depth=1, num_repetitions=4)
    options = dict(model=model, objective=MODEL_DEFAULTS[model][0], dataset=dataset, num_sums=8, num_leaves=8,
                   batch_size=32, epochs=1, max_batches_per_epoch=2, num_final_samples=8, latent_dim=2,
                   device="cpu", lr=1e-3, output=str(tmp_path / name), **knobs)
    return TrainConfig(**{**options, **changes})


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# -- budgets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [VAE, Generator])
@pytest.mark.parametrize("event_shape, leaf, budget", [
    *[(*shape, budget) for shape in SHAPES for budget in (200_000, 1_500_000)],
    ((1, 8, 8), Binomial(total_count=16), 5_000), ((2,), Normal(), 5_000), ((2,), Normal(), 500),
])
def test_with_budget_matches_the_parameter_count(cls, event_shape, leaf, budget):
    model = cls.with_budget(event_shape, budget, leaf=leaf, latent_dim=4)
    assert abs(count(model) - budget) <= 0.1 * budget
    assert model.rsample((3,)).shape == (3, *event_shape)


def test_budget_and_argument_errors():
    with pytest.raises(ValueError, match="budget"):
        Generator.with_budget((1, 8, 8), 10, leaf=Binomial(total_count=16))
    with pytest.raises(ValueError, match="budget: no VAE has 5000 parameters"):  # 784 pixels need more
        VAE.with_budget((1, 28, 28), 5000, leaf=Binomial(total_count=255))
    with pytest.raises(ValueError, match="budget"):
        VAE.with_budget((2,), 0, leaf=Normal())
    with pytest.raises(TypeError, match="leaf must be one of the specs Binomial, Normal, Bernoulli"):
        VAE((2,), leaf="normal")


def test_the_budget_is_the_circuit_of_the_same_config():
    config = TrainConfig(model="vae", depth=2, num_repetitions=2, num_sums=8, num_leaves=8)
    budget = spn_num_parameters(config, DIGITS)
    assert budget == Model.build(dataclasses.replace(config, model="spn"), DIGITS).num_parameters()
    for model in ("vae", "gan", "mmd-gan"):
        built = Model.build(dataclasses.replace(config, model=model, objective=MODEL_DEFAULTS[model][0]), DIGITS)
        assert built.kind == model and abs(built.num_parameters() - budget) <= 0.1 * budget
    with pytest.raises(ValueError, match="model vae.*budget.*num_sums"):
        Model.build(dataclasses.replace(config, num_sums=1, num_leaves=1, num_repetitions=1), DIGITS)


# -- the VAE ----------------------------------------------------------------------------------------------
def test_vae_iwae_bound_is_above_the_elbo_and_samples_are_counts():
    torch.manual_seed(0)
    vae = VAE((1, 8, 8), leaf=Binomial(total_count=16), latent_dim=4, hidden=32, num_importance=256)
    x = vae.sample((20,))
    assert x.shape == (20, 1, 8, 8) and torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= 16
    with torch.no_grad():
        elbo = torch.stack([vae.elbo(x) for _ in range(64)]).mean(0)
        iwae = vae.log_prob(x)
    assert torch.isfinite(iwae).all() and (iwae >= elbo).all()
    mean = vae.rsample((5,))
    assert mean.shape == (5, 1, 8, 8) and mean.requires_grad and 0 <= mean.min() and mean.max() <= 16
    assert vae.reconstruct(x).shape == x.shape and vae.loss(x).dim() == 0


def test_vae_learns_a_2d_gaussian():
    torch.manual_seed(0)
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]])
    truth = torch.distributions.MultivariateNormal(torch.zeros(2), covariance)
    data = truth.sample((4096,))
    vae = VAE((2,), leaf=Normal(), latent_dim=2, hidden=16)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    for _ in range(200):
        batch = data[torch.randint(0, 4096, (128,))]
        loss = vae.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    test = truth.sample((512,))
    with torch.no_grad():
        gap = float(truth.log_prob(test).mean() - vae.log_prob(test).mean())
    assert -0.05 < gap < 0.2  # the IWAE bound is below log p(x), and close to it
    assert vae.sample((7,)).shape == (7, 2)


# -- the generator ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("event_shape, leaf", SHAPES)
def test_generator_support_and_gradients(event_shape, leaf):
    torch.manual_seed(0)
    generator = Generator(event_shape, leaf=leaf, latent_dim=4, width=4)
    fake = generator.rsample((6,))
    assert fake.shape == (6, *event_shape)
    fake.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())
    x = generator.sample((2, 3))
    assert x.shape == (2, 3, *event_shape) and not x.requires_grad
    if not isinstance(leaf, Normal):
        assert torch.equal(x, x.round()) and x.min() >= 0 and x.max() <= getattr(leaf, "total_count", 1)
    assert not hasattr(generator, "log_prob")


def test_existing_objectives_train_a_generator():
    torch.manual_seed(0)
    data = torch.randint(0, 17, (16, 1, 8, 8)).float()
    for objective in (make_objective("adv", event_shape=(1, 8, 8), scale=16.0),
                      make_objective("mmd", event_shape=(1, 8, 8), kernel="learned", scale=16.0)):
        generator = Generator((1, 8, 8), leaf=Binomial(total_count=16), latent_dim=4, width=8)
        before = [p.detach().clone() for p in generator.parameters()]
        optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
        objective.auxiliary_step(generator, data)
        loss = objective.loss(generator, data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert all(not torch.equal(a, b) for a, b in zip(before, generator.parameters(), strict=True))


def test_histogram_log_density():
    samples = torch.rand(10000, 2)
    log_density = histogram_log_density(samples, samples, bins=8)
    inside = log_density(torch.tensor([[0.5, 0.5], [0.3, 0.7]]))
    assert torch.allclose(inside.exp(), torch.ones(2), rtol=0.3)
    assert log_density(torch.tensor([[5.0, 5.0]])).item() == -math.inf


# -- configs ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("changes, field", [
    (dict(model="gpt"), "model"),
    (dict(model="gan", objective="ll"), "objective must be adv for model gan"),
    (dict(model="vae", objective="mmd"), "objective must be ll for model vae"),
    (dict(model="mmd-gan", objective="mmd", mmd_adversarial=False), "mmd_adversarial"),
    (dict(model="gan", objective="adv", pretrain_epochs=1), "pretrain_epochs"),
    (dict(model="gan", objective="adv", nll_weight=0.1), "nll_weight"),
    (dict(model="vae", objective="ll", estimator="straight_through"), "estimator"),
])
def test_config_rejects_inconsistent_baselines(changes, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**changes).validate()


def test_old_configs_without_model_load_as_spn():
    values = json.loads(TrainConfig().to_json())
    del values["model"]
    assert TrainConfig.from_json(json.dumps(values)).model == "spn"
    assert str(TrainConfig(model="gan", objective="adv").run_dir) == "runs/gan-digits-seed0"


# -- training ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", ["vae", "gan", "mmd-gan"])
@pytest.mark.parametrize("dataset", ["digits", "2-moons"])
def test_trainer_runs_every_baseline(tmp_path, model, dataset):
    config = small(tmp_path, model, dataset)
    trainer = Trainer(config, progress=False)
    records = trainer.fit()
    run = tmp_path / "run"
    assert len(records) == 1 and math.isfinite(records[0]["train_loss"])
    assert (records[0]["val_nll"] is None) == (model != "vae")
    if model == "vae":
        assert math.isfinite(records[0]["val_nll"])
    with Image.open(run / "samples_epoch001.png") as picture:
        assert picture.size == ((8 * 34 + 2,) * 2 if dataset == "digits" else (256, 256))
    with h5py.File(run / "samples.h5") as file:
        samples = file["model_samples"][()]
        assert samples.shape == (8, *trainer.info.event_shape)
    if dataset == "digits":
        assert (samples == samples.round()).all() and samples.min() >= 0 and samples.max() <= 16

    saved = SavedRun.load(run, device="cpu")
    assert saved.model.kind == model and saved.epoch == 1
    for name, tensor in trainer.model.network.state_dict().items():
        assert torch.equal(tensor, saved.model.network.state_dict()[name])
    assert saved.model.sample(5, 4).shape == (5, *trainer.info.event_shape)
    assert saved.model.has_likelihood == (model == "vae") and saved.model.can_reconstruct == (model == "vae")
    x = trainer.data.val[:4]
    if model == "vae":
        assert saved.model.log_likelihood(x).shape == (4,) and saved.model.reconstruct(x).shape == x.shape
    else:
        with pytest.raises(ValueError, match="no likelihood"):
            saved.model.log_likelihood(x)
        with pytest.raises(ValueError, match="cannot reconstruct"):
            saved.model.reconstruct(x)
    with pytest.raises(AttributeError):
        saved.model.spn  # noqa: B018
    if dataset == "digits":
        with pytest.raises(ValueError, match="inpainting needs a circuit"):
            saved.inpaint(x, "top")


def test_spn_models_keep_their_interface():
    config = TrainConfig(depth=2, num_repetitions=2, num_sums=2, num_leaves=2, latent_dim=2)
    spn = Model.build(config, DIGITS)
    assert spn.kind == "spn" and spn.has_likelihood and not spn.can_reconstruct and spn.spn is spn.network
    assert spn.num_parameters() == count(spn.spn)
    pae = Model.build(dataclasses.replace(config, objective="pae"), DIGITS)
    assert pae.can_reconstruct
    x = torch.randint(0, 17, (3, 1, 8, 8)).float()
    reconstruction = pae.reconstruct(x)
    assert reconstruction.shape == x.shape and torch.equal(reconstruction, reconstruction.round())
    with pytest.raises(ValueError, match="cannot reconstruct"):
        spn.reconstruct(x)


def test_baseline_resume_is_bit_identical(tmp_path):
    Trainer(small(tmp_path, "gan", name="straight", epochs=2), progress=False).fit()
    Trainer(small(tmp_path, "gan", name="resumed", epochs=1), progress=False).fit()
    torch.manual_seed(1234)
    trainer = Trainer.resume(tmp_path / "resumed", epochs=2, progress=False)
    assert trainer.epoch == 1
    trainer.fit()
    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key in ("spn", "objective"):
        for name, tensor in straight[key].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"


# -- the CLI ----------------------------------------------------------------------------------------------
def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


SMALL = ["--sums", "8", "--leaves", "8", "--batch-size", "32", "--epochs", "1", "--max-batches-per-epoch", "2",
         "--num-final-samples", "8", "--latent-dim", "2", "--device", "cpu", "--no-progress"]
MOONS_KNOBS = ["--depth", "1", "--repetitions", "4"]
DIGITS_KNOBS = ["--depth", "2", "--repetitions", "2"]


def one_line_error(result, match: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.stderr


def test_cli_trains_and_samples_a_gan(tmp_path):
    run = tmp_path / "gan"
    result = invoke(train, "--model", "gan", "--dataset", "2-moons", "--output", run, *SMALL, *MOONS_KNOBS)
    assert result.exit_code == 0, result.output
    config = TrainConfig.from_json((run / "config.json").read_text())
    assert (config.model, config.objective, config.lr) == ("gan", "adv", 2e-4)
    assert json.loads((run / "metrics.jsonl").read_text())["val_nll"] is None
    result = invoke(sample, "--checkpoint", run, "--num-samples", 20, "--output", tmp_path / "s.png",
                    "--hdf5", tmp_path / "s.h5")
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "s.h5") as file:
        assert file["samples"].shape == (20, 2)


def test_cli_errors_for_baselines(tmp_path):
    one_line_error(invoke(train, "--model", "gan", "--objective", "mmd", "--output", tmp_path / "a", *SMALL,
                          *DIGITS_KNOBS), "objective must be adv for model gan")
    one_line_error(invoke(train, "--model", "vae", "--output", tmp_path / "b", "--depth", "2", "--repetitions",
                          "1", "--sums", "1", "--leaves", "1", "--device", "cpu"), "budget")
    run = tmp_path / "vae"
    result = invoke(train, "--model", "vae", "--output", run, *SMALL, *DIGITS_KNOBS)
    assert result.exit_code == 0, result.output
    one_line_error(invoke(sample, "--checkpoint", run, "--inpaint", "top"), "inpainting needs a circuit")
