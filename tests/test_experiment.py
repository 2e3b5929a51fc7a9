"""The experiment runner end to end on tiny grids (2 settings × 2 seeds × 1 epoch) on a 2-D set and on digits,
resume after an interruption, the selection rule, the reports, the figures, and the CLI's errors."""

import csv
import dataclasses
import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyro_spn.experiment import METHODS, Experiment, ExperimentConfig, RunSpec, evaluate_run
from pyro_spn.experiment import protocol as protocol_module
from pyro_spn.experiment.cli import experiment as experiment_command
from pyro_spn.experiment.report import criterion, select, summary
from pyro_spn.metrics import mmd2_rbf
from pyro_spn.objectives import data_bandwidths
from pyro_spn.train import TrainConfig, Trainer

TINY = {"depth": 2, "num_repetitions": 2, "num_sums": 2, "num_leaves": 2, "max_batches_per_epoch": 2,
        "num_final_samples": 8, "latent_dim": 2, "device": "cpu"}


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def tiny(tmp_path, **changes) -> ExperimentConfig:
    options = dict(output=str(tmp_path / "experiment"), datasets=("2-moons",), methods=("ll", "adv"),
                   lrs=(0.01, 0.001), batch_sizes=(32,), seeds=2, epochs=1, num_samples=64, classifier_epochs=2,
                   train=dict(TINY),
                   progress=False)
    return ExperimentConfig(**{**options, **changes})


def read_csv(path) -> list[dict]:
    with path.open() as file:
        return list(csv.DictReader(file))


# -- end to end -------------------------------------------------------------------------------------------
def test_protocol_on_a_2d_set(tmp_path):
    config = tiny(tmp_path, methods=("ll", "adv", "gan"))
    rows = Experiment(config).run()
    root = tmp_path / "experiment"
    grid = [r for r in rows if r["split"] == "val"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(grid) == 3 * 2  # methods × settings, seed 0
    assert len(test) == 3 * 2  # methods × seeds at the selected setting
    assert {r["seed"] for r in test} == {0, 1}
    for row in test:
        assert row["mmd2"] is not None and row["error"] is None
        assert (row["nll"] is None) == (row["method"] == "gan")  # a GAN has no likelihood
        assert row["mode_coverage"] is None  # 2-moons has no modes
    csv_rows = read_csv(root / "results.csv")
    assert len(csv_rows) == len(rows)
    text = (root / "summary.md").read_text()
    assert "## 2-moons: test split, mean ± std over 2 seed(s)" in text
    assert "| gan |" in text and "MMD²" in text
    with Image.open(root / "densities.png") as picture:
        assert picture.size[0] > 3 * 200 and picture.size[1] > 200  # 3 method columns, 1 data-set row
    assert not (root / "samples.png").exists()  # no image data set


def test_protocol_on_digits_reports_image_metrics(tmp_path):
    config = tiny(tmp_path, datasets=("digits",), methods=("ll", "pae", "ll-class"), lrs=(0.01,), batch_sizes=(32, 64))
    rows = Experiment(config).run()
    root = tmp_path / "experiment"
    assert (root / "features" / "digits.pt").is_file()  # the FID classifier, trained once
    test = [r for r in rows if r["split"] == "test"]
    assert len(test) == 3 * 2
    for row in test:
        assert row["features"] == "classifier-digits"
        assert row["fid"] > 0 and row["bpd"] > 0 and row["nll"] > 0
        assert (row["reconstruction"] is not None) == (row["method"] == "pae")
        assert (row["accuracy"] is not None) == (row["method"] == "ll-class")
    assert "classifier on samples" in (root / "summary.md").read_text()
    with Image.open(root / "samples.png") as picture:
        assert picture.size[1] > 2 * 200  # a row per method
    assert "FID / KID features: classifier-digits" in (root / "summary.md").read_text()


def test_rerun_skips_finished_runs_and_resumes_interrupted_ones(tmp_path, monkeypatch):
    config = tiny(tmp_path, epochs=2)
    calls = []
    original = protocol_module.execute

    class Interrupted(Exception):
        pass

    interrupt = [True]

    def interrupted_after_two(task):
        if interrupt[0] and len(calls) == 2:
            raise Interrupted
        calls.append((task.spec, task.splits))
        return original(task)

    monkeypatch.setattr(protocol_module, "execute", interrupted_after_two)
    with pytest.raises(Interrupted):
        Experiment(config).run()
    # A third run interrupted after its first epoch: its checkpoint is there, its final samples are not.
    third = [s for s in config.plan_grid() if (s, ("val",)) not in calls][0]
    Trainer(dataclasses.replace(third.train_config(config), epochs=1), progress=False).fit()
    (third.folder(config) / "samples.h5").unlink()
    first_lines = (third.folder(config) / "metrics.jsonl").read_text().splitlines()
    finished = {s: (s.folder(config) / "eval-val.json").stat().st_mtime_ns for s, _ in calls}

    calls.clear()
    interrupt[0] = False
    Experiment(config).run()
    assert all((spec, ("val",)) not in calls for spec in finished)  # evaluated runs were not executed again
    assert all((s.folder(config) / "eval-val.json").stat().st_mtime_ns == t for s, t in finished.items())
    lines = (third.folder(config) / "metrics.jsonl").read_text().splitlines()
    assert lines[:1] == first_lines and len(lines) == 2  # resumed at epoch 2, not retrained

    calls.clear()
    rows = Experiment(config).run()  # everything done: nothing runs
    assert calls == [] and len(rows) == 4 + 4


def test_a_folder_with_other_settings_is_refused(tmp_path):
    Experiment(tiny(tmp_path, methods=("ll",), lrs=(0.01,), seeds=1))
    with pytest.raises(ValueError, match="other settings.*epochs"):
        Experiment(tiny(tmp_path, methods=("ll",), lrs=(0.01,), seeds=1, epochs=3))
    Experiment(tiny(tmp_path, methods=("ll",), lrs=(0.01,), seeds=1, jobs=2))  # jobs may change


def test_parallel_jobs_give_the_same_results(tmp_path):
    serial = Experiment(tiny(tmp_path / "a", methods=("ll",), seeds=1)).run()
    parallel = Experiment(tiny(tmp_path / "b", methods=("ll",), seeds=1, jobs=2)).run()
    key = lambda r: (r["split"], r["lr"], r["seed"])  # noqa: E731
    for a, b in zip(sorted(serial, key=key), sorted(parallel, key=key), strict=True):
        assert a["nll"] == pytest.approx(b["nll"], rel=1e-5) and a["mmd2"] == pytest.approx(b["mmd2"], rel=1e-4)


def test_failed_runs_are_recorded_and_not_selected(tmp_path, monkeypatch):
    config = tiny(tmp_path, methods=("ll",), seeds=1)

    def fail_large_lr(self):
        if self.config.lr == 0.01:
            from pyro_spn.train import NonFiniteLossError
            raise NonFiniteLossError(1, 1, float("nan"))
        return original(self)

    original = Trainer.fit
    monkeypatch.setattr(Trainer, "fit", fail_large_lr)
    rows = Experiment(config).run()
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 1 and failed[0]["lr"] == 0.01 and "non-finite" in failed[0]["error"]
    assert {r["lr"] for r in rows if r["split"] == "test"} == {0.001}


# -- pieces ---------------------------------------------------------------------------------------------
def test_selection_minimizes_each_methods_criterion(tmp_path):
    config = tiny(tmp_path, datasets=("digits", "2-moons"), methods=("ll", "adv", "pae"))
    assert criterion("ll", "digits") == "nll" and criterion("adv", "digits") == "fid"
    assert criterion("adv", "2-moons") == "mmd2" and criterion("pae", "digits") == "reconstruction"
    rows = [
        {"dataset": "digits", "method": "ll", "split": "val", "lr": 0.01, "batch_size": 32, "nll": 5.0, "fid": 1.0},
        {"dataset": "digits", "method": "ll", "split": "val", "lr": 0.001, "batch_size": 32, "nll": 4.0, "fid": 9.0},
        {"dataset": "digits", "method": "adv", "split": "val", "lr": 0.01, "batch_size": 32, "fid": 3.0},
        {"dataset": "digits", "method": "adv", "split": "val", "lr": 0.001, "batch_size": 32, "fid": float("nan")},
        {"dataset": "2-moons", "method": "adv", "split": "val", "lr": 0.01, "batch_size": 32, "mmd2": None,
         "error": "non-finite loss"},
    ]
    selected = select(rows, config)
    assert selected == {("digits", "ll"): (0.001, 32), ("digits", "adv"): (0.01, 32)}
    text = summary(rows, selected, config)
    assert "Every grid setting failed for: digits/pae, 2-moons/ll, 2-moons/adv." in text


def test_pae_is_skipped_on_2d_sets_and_methods_are_all_listed(tmp_path):
    config = tiny(tmp_path, datasets=("2-moons", "digits"), methods=("pae",))
    assert [s.dataset for s in config.plan_grid()] == ["digits", "digits"]
    with pytest.raises(ValueError, match="no method runs"):
        tiny(tmp_path, methods=("pae",)).validate()
    assert {"ll", "adv", "mmd", "pae", "vae", "gan", "mmd-gan", "adv-pretrained", "adv+nll"} <= set(METHODS)


def test_hybrid_methods_set_pretraining_and_the_nll_weight(tmp_path):
    config = tiny(tmp_path, epochs=4, nll_weight=0.5)
    pretrained = RunSpec("2-moons", "adv-pretrained", 0.01, 32, 0).train_config(config)
    joint = RunSpec("2-moons", "mmd+nll", 0.01, 32, 0).train_config(config)
    assert pretrained.pretrain_epochs == 2 and pretrained.objective == "adv" and pretrained.nll_weight == 0
    assert joint.nll_weight == 0.5 and joint.objective == "mmd" and joint.pretrain_epochs == 0
    assert isinstance(joint, TrainConfig) and joint.model == "spn"


def test_every_method_makes_a_valid_config_and_the_estimator_methods_set_theirs(tmp_path):
    config = tiny(tmp_path, epochs=4)
    for name, method in METHODS.items():
        dataset = "digits" if method.images_only else "2-moons"
        RunSpec(dataset, name, 0.01, 32, 0).train_config(config).validate()
    exact = RunSpec("2-moons", "mmd-exact+nll", 0.01, 32, 0).train_config(config)
    assert (exact.estimator, exact.mmd_adversarial, exact.mmd_bandwidths) == ("exact", False, "data")
    assert exact.nll_weight == config.nll_weight
    score = RunSpec("2-moons", "adv-score-pretrained", 0.01, 32, 0).train_config(config)
    assert (score.estimator, score.pretrain_epochs, score.objective) == ("score", 2, "adv")
    assert RunSpec("2-moons", "adv", 0.01, 32, 0).train_config(config).estimator == "soft"


@pytest.mark.parametrize("changes, message", [
    ({"datasets": ("mnist2",)}, "datasets: unknown data set 'mnist2'"),
    ({"methods": ("ll", "flow")}, "methods: unknown method 'flow'"),
    ({"methods": ()}, "methods must be a non-empty list"),
    ({"lrs": (0.0,)}, "lrs must be a finite number > 0"),
    ({"batch_sizes": (0,)}, "batch_sizes must be an integer >= 1"),
    ({"seeds": 0}, "seeds must be an integer >= 1"),
    ({"features": "vgg"}, "features must be one of classifier, inception"),
    ({"features": "inception"}, "inception_weights"),
    ({"features": "inception", "inception_weights": "missing.pth"}, "inception_weights.*'missing.pth'"),
    ({"train": {"lr": 0.1}}, "train: 'lr' cannot be set per experiment"),
    ({"train": {"num_sums": 0}}, "num_sums must be an integer >= 1"),
])
def test_bad_configs_name_the_field(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        tiny(tmp_path, **changes).validate()


def test_evaluate_run_checks_the_split(tmp_path):
    config = TrainConfig(dataset="2-moons", epochs=1, output=str(tmp_path / "run"), **TINY)
    Trainer(config, progress=False).fit()
    with pytest.raises(ValueError, match="split must be one of val, test"):
        evaluate_run(tmp_path / "run", "train")
    torch.manual_seed(0)
    result = evaluate_run(tmp_path / "run", "test", num_samples=32)
    assert result["epochs"] == 1 and result["num_parameters"] > 0 and result["train_seconds"] > 0


def test_2d_mmd_bandwidths_follow_the_data_scale():
    torch.manual_seed(0)
    data = torch.randn(1000, 2) * torch.tensor([1.0, 0.1])
    collapsed = torch.randn(1000, 2) * torch.tensor([1.0, 0.0])  # the data's spread along one axis, none across
    reference = mmd2_rbf(collapsed, data, data_bandwidths(data))
    for scale in (0.1, 1.0, 30.0):
        bandwidths = data_bandwidths(data * scale)
        assert bandwidths[-1] / bandwidths[0] == pytest.approx(16)
        assert mmd2_rbf(collapsed * scale, data * scale, bandwidths) == pytest.approx(reference, rel=1e-6)
    # fixed bandwidths 1..16 hardly see the collapse of a set a few tenths wide; the data's own scale does
    assert mmd2_rbf(collapsed * 0.3, data * 0.3) < reference / 5


# -- CLI ------------------------------------------------------------------------------------------------
def test_cli_runs_and_writes_the_summary(tmp_path):
    result = CliRunner().invoke(experiment_command, [
        "--output", str(tmp_path / "cli"), "--datasets", "2-moons", "--methods", "ll", "--lrs", "0.01",
        "--batch-sizes", "32", "--seeds", "1", "--epochs", "1", "--num-samples", "32", "--depth", "2",
        "--repetitions", "2", "--sums", "2", "--leaves", "2", "--max-batches-per-epoch", "2", "--device", "cpu",
        "--no-progress"], standalone_mode=False)
    assert result.exception is None, result.output
    assert (tmp_path / "cli" / "summary.md").is_file()
    saved = json.loads((tmp_path / "cli" / "experiment.json").read_text())
    assert saved["train"]["num_sums"] == 2 and saved["datasets"] == ["2-moons"]


@pytest.mark.parametrize("arguments, message", [
    (["--methods", "ll,flow"], "unknown method 'flow'"),
    (["--lrs", "0.1,fast"], "expected comma-separated floats"),
    (["--seeds", "0"], "--seeds"),
    (["--datasets", "imagenet"], "unknown data set 'imagenet'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, arguments, message):
    import subprocess
    import sys

    process = subprocess.run([sys.executable, "-c", "from pyro_spn.scripts import experiment; experiment()",
                              "--output", str(tmp_path / "x"), *arguments], capture_output=True, text=True)
    assert process.returncode == 2, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0]
