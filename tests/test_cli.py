"""``pyrospn-train`` and ``pyrospn-sample`` end to end (click's CliRunner, tiny circuits, a few batches), and
their error reporting: one line ``Error: ...``, exit code 2 (1 for a non-finite loss), never a traceback."""

import dataclasses
import json

import h5py
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyro_spn import scripts
from pyro_spn.objectives import LikelihoodObjective
from pyro_spn.train import TrainConfig
from pyro_spn.train.cli import sample, train

TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "32", "--epochs", "2",
        "--max-batches-per-epoch", "2", "--num-final-samples", "8", "--latent-dim", "2", "--device", "cpu",
        "--no-progress"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Runs every test in its own folder, so the default data root (data/, with the HDF5 cache) and run
    folders never land in the repository."""
    monkeypatch.chdir(tmp_path)


def invoke(command, *args: str):
    return CliRunner().invoke(command, [str(a) for a in args])


def assert_ok(result) -> None:
    assert result.exit_code == 0, result.output


def assert_one_line_error(result, exit_code: int = 2, match: str = "") -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert "Traceback" not in result.output and match in lines[0]
    return lines[0]


def picture_size(path) -> tuple[int, int]:
    with Image.open(path) as picture:
        picture.load()
        return picture.size


def check_run(run, objective: str, dataset: str, event_shape: tuple[int, ...]) -> None:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert all({"train_loss", "val_nll", "temperature", "seconds"} <= set(r) for r in records)
    for epoch in (1, 2):
        assert picture_size(run / f"samples_epoch{epoch:03d}.png")[0] > 8
    assert (run / "checkpoint.pt").is_file()
    config = TrainConfig.from_json((run / "config.json").read_text())
    assert (config.objective, config.dataset) == (objective, dataset)
    with h5py.File(run / "samples.h5") as file:
        assert file["samples"].shape == (8, *event_shape)
        assert (file.attrs["objective"], file.attrs["dataset"], file.attrs["epoch"]) == (objective, dataset, 2)


@pytest.mark.parametrize("objective", ["ll", "adv", "mmd", "pae"])
def test_train_and_sample_digits(tmp_path, objective):
    run = tmp_path / "run"
    assert_ok(invoke(train, "--objective", objective, "--output", run, *TINY))
    check_run(run, objective, "digits", (1, 8, 8))

    assert_ok(invoke(sample, "--checkpoint", run, "--num-samples", 9, "--hdf5", tmp_path / "s.h5"))
    assert picture_size(run / "sample.png") == (3 * 34 + 2, 3 * 34 + 2)  # 8 × 8 enlarged to 32 × 32, 2-pixel borders
    with h5py.File(tmp_path / "s.h5") as file:
        samples = file["samples"][()]
        assert samples.shape == (9, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1

    picture = tmp_path / "pictures" / "inpaint.png"
    assert_ok(invoke(sample, "--checkpoint", run / "checkpoint.pt", "--inpaint", "top", "--num-samples", 3,
                     "--output", picture, "--hdf5", tmp_path / "i.h5"))
    assert picture_size(picture) == (3 * 34 + 2, 4 * 34 + 2)  # rows: original, masked, sample, MPE
    with h5py.File(tmp_path / "i.h5") as file:
        original, completed, missing = file["original"][()], file["sample"][()], file["missing"][()].astype(bool)
        assert missing[:, :, :4].all() and not missing[:, :, 4:].any()
        assert (completed[~missing] == original[~missing]).all()  # observed pixels are kept
        assert file["mpe"].shape == (3, 1, 8, 8)


@pytest.mark.parametrize("objective", ["ll", "adv", "mmd", "pae"])
def test_train_and_sample_2d(tmp_path, objective):
    run = tmp_path / "run"
    latent = ("--latent-dim", "1") if objective == "pae" else ()
    assert_ok(invoke(train, "--objective", objective, "--dataset", "2-moons", "--output", run, *TINY,
                     "--depth", "1", *latent))
    check_run(run, objective, "2-moons", (2,))
    assert picture_size(run / "samples_epoch002.png") == (256, 256)
    assert_ok(invoke(sample, "--checkpoint", run, "--num-samples", 50, "--output", tmp_path / "density.png"))
    assert picture_size(tmp_path / "density.png") == (256, 256)
    assert_one_line_error(invoke(sample, "--checkpoint", run, "--inpaint", "left"), match="2-D")


def test_resume_through_the_cli(tmp_path):
    run = tmp_path / "run"
    assert_ok(invoke(train, "--output", run, *TINY, "--epochs", "1"))
    assert_one_line_error(invoke(train, "--output", run, *TINY, "--epochs", "1"), match="--resume")
    assert_one_line_error(invoke(train, "--output", run, "--resume", "--lr", "0.5"), match="remove --lr")
    assert_one_line_error(invoke(train, "--resume"), match="--output")
    assert_ok(invoke(train, "--output", run, "--resume", "--epochs", "2", "--no-progress"))
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("args, match", [
    (["--objective", "gan"], "--objective"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "abc"], "--lr"),
    (["--epochs", "0"], "--epochs"),
    (["--dataset", "imagenet"], "--dataset"),
    (["--temperature", "annealed", "--tau", "0.2", "--tau-min", "0.5"], "tau_min"),
    (["--pretrain-epochs", "5", "--epochs", "2"], "pretrain_epochs"),
    (["--objective", "ll", "--nll-weight", "1"], "nll_weight"),
    (["--no-such-option"], "--no-such-option"),
])
def test_bad_train_options(tmp_path, args, match):
    assert_one_line_error(invoke(train, "--output", tmp_path / "run", *args), match=match)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_torchvision_data_set(tmp_path):
    line = assert_one_line_error(invoke(train, "--dataset", "mnist", "--data-root", tmp_path / "empty",
                                        "--output", tmp_path / "run"), match="mnist")
    assert "--download" in line


def test_inpainting_reads_test_images_from_data_root(tmp_path):
    run = tmp_path / "run"
    assert_ok(invoke(train, "--output", run, *TINY, "--epochs", "1"))
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["data"]["name"] = "mnist"  # pretend the run was on MNIST, whose files are not here
    torch.save(state, run / "checkpoint.pt")
    assert_ok(invoke(sample, "--checkpoint", run))  # unconditional samples need no data
    assert_one_line_error(invoke(sample, "--checkpoint", run, "--inpaint", "top", "--data-root", tmp_path / "none"),
                          match=str(tmp_path / "none"))


def test_missing_and_corrupt_checkpoints(tmp_path):
    assert_one_line_error(invoke(sample, "--checkpoint", tmp_path / "nowhere"), match="no checkpoint")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    assert_one_line_error(invoke(sample, "--checkpoint", tmp_path / "bad.pt"), match="not a readable checkpoint")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_text("garbage")
    assert_one_line_error(invoke(train, "--output", tmp_path / "run", "--resume"), match="not a readable checkpoint")
    assert_one_line_error(invoke(sample, "--checkpoint", tmp_path / "run", "--inpaint", "middle"), match="--inpaint")
    assert_one_line_error(invoke(sample), match="--checkpoint")


def test_non_finite_loss_exits_with_code_1(tmp_path, monkeypatch):
    monkeypatch.setattr(LikelihoodObjective, "loss", lambda self, d, x: -d.log_prob(x).mean() * float("inf"))
    assert_one_line_error(invoke(train, "--output", tmp_path / "run", *TINY), exit_code=1, match="epoch 1, batch 1")


def test_help_lists_every_option():
    result = invoke(train, "--help")
    assert_ok(result)
    for parameter in train.params:
        for option in parameter.opts + parameter.secondary_opts:
            assert option in result.output
    destinations = {parameter.name for parameter in train.params}
    filled_from_files = {"region_graph": "structure_file"}  # config fields the CLI reads from a file option
    assert set(filled_from_files.values()) <= destinations
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    assert fields - set(filled_from_files) <= destinations  # every other field has an option of its own
    result = invoke(sample, "--help")
    assert_ok(result)
    for option in ("--checkpoint", "--num-samples", "--output", "--inpaint", "--hdf5", "--data-root", "--seed",
                   "--device"):
        assert option in result.output


@pytest.mark.parametrize("entry, name", [(scripts.train, "pyrospn-train"), (scripts.sample, "pyrospn-sample"),
                                         (scripts.experiment, "pyrospn-experiment")])
def test_console_script_entry_points(entry, name, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", [name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        entry()
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith(f"Usage: {name} [OPTIONS]")
    monkeypatch.setattr("sys.argv", [name, "--bogus"])
    with pytest.raises(SystemExit) as exit_:
        entry()
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and error.startswith("Error: No such option") and error.count("\n") == 1
