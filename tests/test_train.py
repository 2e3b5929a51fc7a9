"""The trainer: config validation, seeded shuffles, temperature schedules, bit-identical resume, non-finite
losses, checkpoints and pictures (tiny circuits on the 8 × 8 digits, a few batches per epoch)."""

import copy
import dataclasses
import json
import math

import h5py
import pytest
import torch
from PIL import Image

from pyro_spn import SPNDistribution
from pyro_spn.joint import JointSPN, MarginalSPNDistribution
from pyro_spn.leaves import Binomial
from pyro_spn.objectives import AutoEncodingObjective, HybridObjective
from pyro_spn.train import CheckpointError, NonFiniteLossError, TrainConfig, Trainer
from pyro_spn.train.checkpoint import load_checkpoint
from pyro_spn.train.model import DataInfo, Model, auto_depth
from pyro_spn.train.pictures import colormap, save_density_picture
from pyro_spn.train.sample import SavedRun
from pyro_spn.train.trainer import epoch_batches


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Runs every test in its own folder, so the default data root (data/, with the HDF5 cache) and run
    folders never land in the repository."""
    monkeypatch.chdir(tmp_path)


def tiny(tmp_path, name: str = "run", **changes) -> TrainConfig:
    options = dict(depth=2, num_repetitions=2, num_sums=2, num_leaves=2, batch_size=32, epochs=2,
                   max_batches_per_epoch=2, num_final_samples=8, latent_dim=2, device="cpu",
                   output=str(tmp_path / name))
    return TrainConfig(**{**options, **changes})


def metrics(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- config ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, accepted, error_type", [
    ("objective", "gan", "ll, adv, mmd, pae", ValueError),
    ("dataset", "imagenet", "digits", ValueError),
    ("temperature", "cold", "constant, annealed, learned", ValueError),
    ("interpolation", "pixel", "unit, region", ValueError),
    ("device", "tpu", "auto, cpu, cuda", ValueError),
    ("lr", -0.1, "> 0", ValueError),
    ("lr", float("nan"), "> 0", ValueError),
    ("lr", "fast", "> 0", TypeError),
    ("batch_size", 0, ">= 1", ValueError),
    ("batch_size", 2.0, ">= 1", TypeError),
    ("depth", 0, "in [1, 30]", ValueError),
    ("nll_weight", -1.0, ">= 0", ValueError),
    ("estimator", "rebar", "soft, straight_through, score, exact", ValueError),
    ("max_batches_per_epoch", 0, ">= 1", ValueError),
])
def test_validate_names_the_field_and_accepted_values(field, value, accepted, error_type):
    with pytest.raises(error_type, match=field) as error:
        dataclasses.replace(TrainConfig(), **{field: value}).validate()
    assert accepted in str(error.value)


def test_validate_cross_field_rules():
    with pytest.raises(ValueError, match="pretrain_epochs"):
        TrainConfig(epochs=2, pretrain_epochs=3).validate()
    with pytest.raises(ValueError, match="tau_min"):
        TrainConfig(temperature="annealed", tau=0.3, tau_min=0.5).validate()
    TrainConfig(temperature="constant", tau=0.3, tau_min=0.5).validate()  # tau_min only matters when annealing


def test_config_json_round_trip_and_errors():
    config = TrainConfig(objective="mmd", depth=3, lr=0.05, mmd_adversarial=False, output="somewhere")
    assert TrainConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown fields.*colour"):
        TrainConfig.from_json(json.dumps({"colour": 1}))
    with pytest.raises(ValueError, match="not valid JSON"):
        TrainConfig.from_json("{")


def test_model_defaults_are_the_configs_not_the_clis():
    assert (TrainConfig().objective, TrainConfig().lr) == ("ll", 1e-2)
    assert (TrainConfig(model="vae").objective, TrainConfig(model="vae").lr) == ("ll", 1e-3)
    assert (TrainConfig(model="gan").objective, TrainConfig(model="gan").lr) == ("adv", 2e-4)
    assert (TrainConfig(model="mmd-gan").objective, TrainConfig(model="mmd-gan", lr=0.1).lr) == ("mmd", 0.1)
    TrainConfig(model="gan").validate()


@pytest.mark.parametrize("flag", ["straight_through", "hard"])  # 0.1's field, and 0.2's development versions'
def test_configs_of_earlier_versions_load(flag):
    values = json.loads(TrainConfig().to_json())
    del values["estimator"]
    for value, estimator in ((True, "straight_through"), (False, "soft")):
        assert TrainConfig.from_json(json.dumps({**values, flag: value})).estimator == estimator
    with pytest.raises(ValueError, match=flag):
        TrainConfig.from_json(json.dumps({**values, flag: "yes"}))


@pytest.mark.parametrize("changes, accepted", [
    (dict(objective="adv", estimator="exact"), "soft, straight_through, score for objective adv"),
    (dict(objective="mmd", estimator="exact"), "with the learned kernel"),
    (dict(model="gan", estimator="score"), "soft for model gan"),
    (dict(objective="mmd", mmd_bandwidths="data"), "mmd_bandwidths must be fixed with the learned kernel"),
])
def test_estimators_and_bandwidths_the_objective_cannot_take_are_refused(changes, accepted):
    with pytest.raises(ValueError, match=accepted):
        TrainConfig(**changes).validate()
    for changes in (dict(objective="mmd", mmd_adversarial=False, estimator="exact"),
                    dict(objective="pae", estimator="exact"), dict(objective="adv", estimator="score"),
                    dict(objective="ll", estimator="score"),
                    dict(objective="mmd", mmd_adversarial=False, mmd_bandwidths="data")):
        TrainConfig(**changes).validate()


def test_default_run_dir_and_auto_depth():
    assert str(TrainConfig(objective="adv", dataset="mnist", seed=3).run_dir) == "runs/adv-mnist-seed3"
    assert auto_depth((1, 8, 8)) == 4 and auto_depth((3, 4, 4)) == 4 and auto_depth((1, 2, 4)) == 3
    assert auto_depth((2,)) == 1 and auto_depth((1,)) == 1


# -- building blocks ------------------------------------------------------------------------------------
def test_epoch_batches_are_a_pure_function_of_seed_and_epoch():
    first = epoch_batches(100, 32, seed=1, epoch=4)
    assert all(torch.equal(a, b) for a, b in zip(first, epoch_batches(100, 32, seed=1, epoch=4), strict=True))
    assert not torch.equal(first[0], epoch_batches(100, 32, seed=1, epoch=5)[0])
    assert not torch.equal(first[0], epoch_batches(100, 32, seed=2, epoch=4)[0])
    assert [len(b) for b in first] == [32, 32, 32]  # the incomplete last batch is dropped
    assert len(torch.cat(first).unique()) == 96
    assert [len(b) for b in epoch_batches(10, 32, seed=0, epoch=0)] == [10]  # unless it is the only one
    assert len(epoch_batches(100, 32, seed=0, epoch=0, max_batches=2)) == 2


def test_model_build_per_objective():
    info = DataInfo("digits", (1, 8, 8), Binomial(total_count=16), True, 10)
    config = TrainConfig(depth=2, num_repetitions=2, num_sums=2, num_leaves=2, latent_dim=3)
    assert Model.build(config, info).spn.event_shape == (1, 8, 8)
    pae = Model.build(dataclasses.replace(config, objective="pae"), info)
    assert isinstance(pae.objective, AutoEncodingObjective) and pae.spn.event_shape == (64 + 3,)
    assert isinstance(pae.network, JointSPN) and pae.can_reconstruct
    labelled = Model.build(dataclasses.replace(config, class_conditional=True), info)
    assert isinstance(labelled.network, JointSPN) and labelled.spn.event_shape == (64 + 1,)
    assert isinstance(labelled.distribution(), SPNDistribution)  # the joint, for -log p(x, y)
    assert isinstance(labelled.data_distribution(), MarginalSPNDistribution)  # the data, for log p(x)
    hybrid = Model.build(dataclasses.replace(config, objective="mmd", nll_weight=0.5), info)
    assert isinstance(hybrid.objective, HybridObjective) and hybrid.objective.nll_weight == 0.5
    learned = Model.build(dataclasses.replace(config, temperature="learned"), info)
    assert len(learned.trainable_parameters()) == len(list(learned.spn.parameters())) + 1


def test_colormap_and_density_picture(tmp_path):
    assert torch.allclose(colormap(torch.tensor([0.0, 1.0])) * 255,
                          torch.tensor([[68.0, 1, 84], [253, 231, 37]]))
    path = tmp_path / "density.png"
    points = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    save_density_picture(lambda x: -(x - 0.5).pow(2).sum(1), path, extent=points, samples=points, data=points,
                         size=32)
    with Image.open(path) as picture:
        assert picture.size == (32, 32) and picture.mode == "RGB"
        assert len(set(picture.tobytes()[i:i + 3] for i in range(0, 32 * 32 * 3, 3))) > 10


# -- training -------------------------------------------------------------------------------------------
def test_fit_writes_the_run_folder(tmp_path):
    config = tiny(tmp_path, objective="adv", pretrain_epochs=1)
    records = Trainer(config, progress=False).fit()
    run = tmp_path / "run"
    assert TrainConfig.from_json((run / "config.json").read_text()) == config
    assert metrics(run) == records
    assert [r["phase"] for r in records] == ["pretrain", "train"]
    assert "d_real" not in records[0] and {"d_real", "d_fake", "discriminator_loss"} <= set(records[1])
    for record in records:
        assert {"epoch", "train_loss", "val_nll", "temperature", "seconds"} <= set(record)
    with Image.open(run / "samples_epoch002.png") as picture:
        assert picture.size == (8 * 34 + 2, 8 * 34 + 2)  # 64 samples of 8 × 8 enlarged to 32 × 32, 2-pixel borders
    state = load_checkpoint(run / "checkpoint.pt")  # weights_only=True
    assert state["epoch"] == 2 and TrainConfig.from_json(state["config"]) == config
    with h5py.File(run / "samples.h5") as file:
        assert file["samples"].shape == (8, 1, 8, 8) and file["model_samples"].shape == (8, 1, 8, 8)
        assert 0 <= file["samples"][()].min() and file["samples"][()].max() <= 1
        assert dict(file.attrs) == {"objective": "adv", "dataset": "digits", "epoch": 2, "leaf": "binomial",
                                    "software": "pyro_spn"}


def test_class_conditional_run_goes_through_the_one_trainer(tmp_path):
    config = tiny(tmp_path, class_conditional=True, epochs=1)
    records = Trainer(config, progress=False).fit()
    run = tmp_path / "run"
    assert math.isfinite(records[0]["train_loss"]) and math.isfinite(records[0]["val_nll"])
    assert records[0]["train_loss"] > records[0]["val_nll"] - 30  # -log p(x, y) is about -log p(x) + log 10
    with Image.open(run / "samples_epoch001.png") as picture:
        assert picture.size == (10 * 34 + 2, 10 * 34 + 2)  # a row of 10 samples per class
    saved = SavedRun.load(run, device="cpu")
    assert saved.model.class_conditional and saved.info.num_classes == 10
    samples = saved.model.sample_given(torch.tensor([3, 7]))
    assert samples.shape == (2, 1, 8, 8) and bool(((samples >= 0) & (samples <= 16)).all())
    with pytest.raises(ValueError, match="class_conditional needs model spn and objective ll"):
        TrainConfig(class_conditional=True, objective="adv").validate()
    with pytest.raises(ValueError, match="no class labels"):
        Model.build(TrainConfig(class_conditional=True), DataInfo("x", (2,), Binomial(total_count=2), False))


@pytest.mark.parametrize("changes", [
    dict(objective="adv", estimator="straight_through"), dict(objective="adv", estimator="score"),
    dict(objective="mmd", estimator="score"), dict(objective="mmd", mmd_adversarial=False, estimator="exact"),
    dict(objective="pae", estimator="score"), dict(objective="pae", estimator="exact", nll_weight=0.1),
], ids=lambda changes: f"{changes['objective']}-{changes['estimator']}")
def test_every_estimator_trains_through_the_trainer(tmp_path, changes):
    records = Trainer(tiny(tmp_path, epochs=1, **changes), progress=False).fit()
    assert math.isfinite(records[0]["train_loss"]) and math.isfinite(records[0]["val_nll"])
    assert SavedRun.load(tmp_path / "run", device="cpu").config.estimator == changes["estimator"]


def test_data_scaled_mmd_bandwidths_follow_the_training_data(tmp_path):
    config = tiny(tmp_path, objective="mmd", mmd_adversarial=False, mmd_bandwidths="data")
    trainer = Trainer(config, progress=False)
    info = trainer.model.info
    assert info.median_distance is not None and 1.0 < info.median_distance < 8.0  # 64 pixels in [0, 1]
    assert trainer.model.objective.bandwidths == pytest.approx([f * info.median_distance
                                                                for f in (0.125, 0.25, 0.5, 1.0, 2.0)])


def test_annealed_temperature_decreases_over_epochs(tmp_path):
    Trainer(tiny(tmp_path, temperature="annealed", tau=1.0, tau_min=0.1, tau_rate=2.0), progress=False).fit()
    taus = [r["temperature"] for r in metrics(tmp_path / "run")]
    assert taus == pytest.approx([1.0, torch.tensor(-1.0).exp().item()])


def test_learned_temperature_changes_over_epochs(tmp_path):
    config = tiny(tmp_path, objective="mmd", mmd_adversarial=False, temperature="learned", lr=0.1, epochs=3)
    Trainer(config, progress=False).fit()
    taus = [r["temperature"] for r in metrics(tmp_path / "run")]
    assert len(set(taus)) == 3 and all(t > 0 for t in taus)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["temperature"]["raw"] != torch.tensor(1.0).expm1().log()


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("changes", [
    dict(objective="adv", temperature="annealed"),
    dict(objective="mmd", mmd_adversarial=True, temperature="learned"),
    dict(objective="adv", estimator="score"),
    dict(objective="mmd", mmd_adversarial=False, mmd_bandwidths="data", estimator="exact"),
    dict(optimizer="em"),
    dict(objective="pae", optimizer="em", pretrain_epochs=1),
], ids=["adv-annealed", "mmd-learned", "adv-score", "mmd-exact", "ll-em", "pae-em-pretrained"])
def test_resume_is_bit_identical(tmp_path, monkeypatch, changes):
    Trainer(tiny(tmp_path, "straight", **changes), progress=False).fit()

    original_epoch = Trainer._epoch

    def crash_at_second_epoch(self, epoch):
        if epoch == 1:
            raise Interrupt
        return original_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "_epoch", crash_at_second_epoch)
    with pytest.raises(Interrupt):
        Trainer(tiny(tmp_path, "resumed", **changes), progress=False).fit()
    monkeypatch.setattr(Trainer, "_epoch", original_epoch)
    assert load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")["epoch"] == 1
    torch.manual_seed(1234)  # the resumed run must not depend on the RNG state it starts in
    trainer = Trainer.resume(tmp_path / "resumed", progress=False)
    assert trainer.epoch == 1
    trainer.fit()

    straight = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "resumed" / "checkpoint.pt")
    for key in ("spn", "objective", "temperature"):
        assert straight[key].keys() == resumed[key].keys()
        for name, tensor in straight[key].items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, resumed[key][name]), f"{key}.{name} differs after resume"
    for index, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["exp_avg_sq"], resumed["optimizer"]["state"][index]["exp_avg_sq"])
    assert torch.equal(straight["rng"]["torch"], resumed["rng"]["torch"])
    assert [r["epoch"] for r in metrics(tmp_path / "resumed")] == [1, 2]
    with h5py.File(tmp_path / "straight" / "samples.h5") as a, h5py.File(tmp_path / "resumed" / "samples.h5") as b:
        assert (a["samples"][()] == b["samples"][()]).all()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    trainer = Trainer(tiny(tmp_path), progress=False)
    run = tmp_path / "run"
    loss = trainer.model.objective.loss
    calls, saved = [], []

    def poisoned(d, x):
        calls.append(1)
        if len(calls) == 3:  # epoch 2 begins: the checkpoint of epoch 1 is on disk
            saved.append((run / "checkpoint.pt").read_bytes())
        value = loss(d, x)
        return value * float("nan") if len(calls) == 4 else value  # epoch 2, batch 2 (2 batches per epoch)

    trainer.model.objective.loss = poisoned
    with pytest.raises(NonFiniteLossError, match="epoch 2, batch 2") as error:
        trainer.fit()
    assert (error.value.epoch, error.value.batch) == (2, 2)
    assert (run / "checkpoint.pt").read_bytes() == saved[0]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert not (run / "samples_epoch002.png").exists() and not (run / "samples.h5").exists()
    assert Trainer.resume(run, progress=False).epoch == 1


def test_existing_run_needs_resume_and_the_same_config(tmp_path):
    config = tiny(tmp_path, epochs=1)
    Trainer(config, progress=False).fit()
    with pytest.raises(ValueError, match="already holds a run"):
        Trainer(config, progress=False)
    with pytest.raises(ValueError, match=r"lr \(saved 0.01, given 0.5\)"):
        Trainer(dataclasses.replace(config, resume=True, lr=0.5), progress=False)
    trainer = Trainer(dataclasses.replace(config, resume=True, epochs=2), progress=False)  # extending is allowed
    trainer.fit()
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2]
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        Trainer(tiny(tmp_path, "fresh", resume=True), progress=False)


def test_corrupt_and_truncated_checkpoints_are_checkpoint_errors(tmp_path):
    Trainer(tiny(tmp_path, epochs=1), progress=False).fit()
    path = tmp_path / "run" / "checkpoint.pt"
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        Trainer.resume(tmp_path / "run", progress=False)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    torch.save({"format_version": 1, "config": "{}"}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        Trainer.resume(tmp_path / "run", progress=False)


def test_checkpoints_that_do_not_fit_are_checkpoint_errors(tmp_path):
    Trainer(tiny(tmp_path, epochs=1), progress=False).fit()
    path = tmp_path / "run" / "checkpoint.pt"
    original = load_checkpoint(path)

    def save_variant(change) -> None:
        state = copy.deepcopy(original)
        change(state)
        torch.save(state, path)

    save_variant(lambda state: state["spn"].update({"root.logits": torch.zeros(7)}))
    with pytest.raises(CheckpointError, match="does not fit.*root.logits"):
        Trainer.resume(tmp_path / "run", progress=False)
    with pytest.raises(CheckpointError, match="does not fit.*root.logits"):
        SavedRun.load(tmp_path / "run")
    save_variant(lambda state: state["rng"].pop("python"))
    with pytest.raises(CheckpointError, match="does not fit.*python"):
        Trainer.resume(tmp_path / "run", progress=False)
    save_variant(lambda state: state.update(config=state["config"].replace('"lr": 0.01', '"lr": "fast"')))
    with pytest.raises(CheckpointError, match="does not fit.*lr"):
        SavedRun.load(tmp_path / "run")
    save_variant(lambda state: None)
    assert SavedRun.load(tmp_path / "run").epoch == 1
