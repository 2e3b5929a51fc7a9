"""The trainer's EM optimizer (``--optimizer em``) and a user's own data (``--data-path``), end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyro_spn.train import TrainConfig, Trainer
from pyro_spn.train.cli import train


def tiny(tmp_path, name: str = "run", **changes) -> TrainConfig:
    options = dict(depth=2, num_repetitions=2, num_sums=3, num_leaves=3, batch_size=64, epochs=3,
                   num_final_samples=8, device="cpu", output=str(tmp_path / name))
    return TrainConfig(**{**options, **changes})


def val_nll(run) -> list[float]:
    return [json.loads(line)["val_nll"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_em_training_improves_the_likelihood_and_leaves_adam_untouched(tmp_path):
    trainer = Trainer(tiny(tmp_path, optimizer="em", em_step_size=0.5), progress=False)
    adam_state = {key: value.clone() for key, value in trainer.optimizer.state_dict()["state"].items()}
    trainer.fit()
    nll = val_nll(tmp_path / "run")
    assert nll[-1] < nll[0] - 1.0
    assert trainer.optimizer.state_dict()["state"] == adam_state == {}  # EM, not Adam, moved the circuit
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["em"]["num_steps"] > 0


def test_em_pretraining_then_the_objective(tmp_path):
    trainer = Trainer(tiny(tmp_path, objective="mmd", mmd_adversarial=False, estimator="exact", optimizer="em",
                           pretrain_epochs=2), progress=False)
    records = trainer.fit()
    assert [r["phase"] for r in records] == ["pretrain", "pretrain", "train"]
    assert trainer.em is not None and trainer.em.num_steps > 0
    assert trainer.optimizer.state_dict()["state"]  # Adam trained the objective after EM


@pytest.mark.parametrize("changes, message", [
    (dict(optimizer="em", objective="adv"), "pretrain_epochs > 0"),
    (dict(optimizer="em", model="vae"), "circuits only"),
    (dict(optimizer="sgd"), "optimizer"),
    (dict(optimizer="em", em_step_size=2.0), "em_step_size"),
    (dict(em_step_size=0.0), "em_step_size"),
])
def test_bad_optimizer_settings_are_refused(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **changes).validate()


@pytest.mark.parametrize("columns", [2, 3])
def test_cli_trains_on_an_npy_array_of_features(tmp_path, columns):
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-2, 0.3, (100, columns)), rng.normal(2, 0.3, (100, columns))])
    points = points.astype(np.float32)
    np.save(tmp_path / "points.npy", points)
    out = tmp_path / "run"
    result = CliRunner().invoke(train, ["--data-path", str(tmp_path / "points.npy"), "--epochs", "2",
                                        "--depth", "1", "--sums", "2", "--leaves", "2", "--repetitions", "2",
                                        "--output", str(out), "--device", "cpu", "--no-progress"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["dataset"] == f"path:{(tmp_path / 'points.npy').resolve()}"
    assert all(np.isfinite(val_nll(out)))
    assert (out / "samples_epoch002.png").exists()  # more than two variables: the first two's exact marginal


def test_cli_trains_on_a_folder_of_images_and_resumes(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for number in range(20):
        Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)).save(folder / f"{number:02d}.png")
    out = tmp_path / "run"
    options = ["--data-path", str(folder), "--depth", "2", "--sums", "2", "--leaves", "2", "--repetitions", "2",
               "--output", str(out), "--device", "cpu", "--no-progress", "--batch-size", "8"]
    result = CliRunner().invoke(train, [*options, "--epochs", "1", "--optimizer", "em"])
    assert result.exit_code == 0, result.output
    resumed = CliRunner().invoke(train, ["--output", str(out), "--resume", "--epochs", "2", "--no-progress"])
    assert resumed.exit_code == 0, resumed.output
    assert len(val_nll(out)) == 2


def test_cli_data_path_errors_are_one_line(tmp_path):
    runner = CliRunner()
    both = runner.invoke(train, ["--data-path", str(tmp_path), "--dataset", "digits", "--output", str(tmp_path / "a")])
    assert both.exit_code == 2 and "--data-path and --dataset" in both.output
    missing = runner.invoke(train, ["--data-path", str(tmp_path / "none.npy"), "--output", str(tmp_path / "b")])
    assert missing.exit_code == 2 and "none.npy" in missing.output and "Traceback" not in missing.output
