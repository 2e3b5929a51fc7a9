"""The command lines' errors: every bad input is one line ``Error: ...`` naming the option or the file, with exit
code 2 and no traceback (sizes that cannot fit are refused up front, damaged files are named), an interruption
exits with code 130 wherever it lands, and the bundled digits leave no ``data/`` folder behind."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import copy_run

from pyro_spn.experiment import Experiment, ExperimentConfig, RunSpec
from pyro_spn.experiment import protocol as protocol_module
from pyro_spn.experiment.cli import experiment
from pyro_spn.train.cli import sample, train

TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "32",
        "--max-batches-per-epoch", "2", "--num-final-samples", "8", "--device", "cpu", "--no-progress"]
EXPERIMENT = ["--datasets", "2-moons", "--methods", "ll", "--lrs", "0.01", "--batch-sizes", "32", "--seeds", "1",
              "--epochs", "1", "--num-samples", "32", "--depth", "1", "--repetitions", "2", "--sums", "2", "--leaves",
              "2", "--max-batches-per-epoch", "2", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The package's cache folder of these tests (and their processes: the native library is built once)."""
    return tmp_path_factory.mktemp("cache") / "pyro_spn"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch, cache):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_SPN_CACHE_DIR", str(cache))


def invoke(command, *args):
    return CliRunner().invoke(command, [str(a) for a in args])


def assert_one_line_error(result, match: str = "", exit_code: int = 2) -> str:
    assert result.exit_code == exit_code, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], result.stderr
    return lines[0]


def run_script(command: str, *args: str, prelude: str = "", timeout: float = 120) -> subprocess.CompletedProcess:
    """A console script (``train``, ``sample``, ``experiment``) in a new process, after the Python code ``prelude``."""
    code = f"{prelude}\nfrom pyro_spn.scripts import {command}\n{command}()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)


def assert_one_line(process: subprocess.CompletedProcess, exit_code: int, match: str = "") -> None:
    assert process.returncode == exit_code, process.stderr
    lines = process.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and match in lines[0], process.stderr


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finished") / "run"
    result = invoke(train, "--output", folder, *TINY, "--epochs", "2")
    assert result.exit_code == 0, result.output
    return folder


# -- sizes that cannot fit are refused up front ------------------------------------------------------------------
@pytest.mark.parametrize("args, match", [
    (["--num-final-samples", str(10**9)], "num_final_samples must be an integer in [1, 4194304]"),
    (["--sums", "100000", "--model", "vae"], "num_sums, num_repetitions, num_leaves, depth"),
    (["--repetitions", str(10**9), "--model", "gan"], "num_sums, num_repetitions, num_leaves, depth"),
    (["--latent-dim", str(10**9), "--model", "vae"], "latent_dim must be an integer in [1, 65536]"),
    (["--depth", str(10**20)], "depth must be an integer in [1, 30]"),
])
def test_sizes_that_cannot_fit_are_refused_up_front(tmp_path, args, match):
    process = run_script("train", "--output", str(tmp_path / "run"), *TINY, *args, timeout=60)
    assert_one_line(process, 2, match)
    assert not (tmp_path / "run").exists()


def test_a_sample_count_that_cannot_fit_is_refused_before_sampling(finished_run):
    process = run_script("sample", "--checkpoint", str(finished_run), "--num-samples", str(10**8),
                         "--output", "s.png", timeout=60)
    assert_one_line(process, 2, "num_samples must be an integer in [1, 4194304]")


@pytest.mark.parametrize("changes, match", [({"num_samples": 10**8}, "num_samples must be an integer in"),
                                            ({"seeds": 10**9}, "would train 2000000008 runs")])
def test_the_experiment_bounds_its_sizes(changes, match):
    with pytest.raises(ValueError, match=match):
        ExperimentConfig(output="e", datasets=("digits",), methods=("ll", "adv"), **changes).validate()


# -- damaged files are named -------------------------------------------------------------------------------------
def test_a_truncated_metrics_log_is_cut_back_and_resumed(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])  # a write cut short
    result = invoke(train, "--output", run, "--resume", "--epochs", "3", "--no-progress")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if line.startswith("Warning: ")]
    assert len(warning) == 1 and "metrics.jsonl" in warning[0] and "dropped its damaged last line 2" in warning[0]
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 3]


def test_a_damaged_metrics_line_before_the_last_is_named(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0][:10] + "\n" + lines[1] + "\n")
    before = (run / "metrics.jsonl").read_bytes()
    assert_one_line_error(invoke(train, "--output", run, "--resume", "--epochs", "3"),
                          match=f"{run / 'metrics.jsonl'}: line 1 is not a metrics record")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_bad_fields_of_a_checkpoints_config_name_the_checkpoint(tmp_path, finished_run):
    run = copy_run(finished_run, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    state["config"] = json.dumps({**json.loads(state["config"]), "lr": -1.0})
    torch.save(state, run / "checkpoint.pt")
    line = assert_one_line_error(invoke(train, "--output", run, "--resume"), match=str(run / "checkpoint.pt"))
    assert "lr must be a finite number > 0" in line


def test_corrupt_mnist_files_are_one_line(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (raw / name).write_bytes(b"\x00\x00\x08\x05" + bytes(64))  # 5 dimensions: torchvision asserts 1 to 3
    assert_one_line_error(invoke(train, "--dataset", "mnist", "--data-root", tmp_path / "data", *TINY),
                          match="data set 'mnist'")


@pytest.mark.parametrize("content, match", [("{}", "the field 'output' is missing"),
                                            ("{\"output\": ", "not valid JSON"),
                                            ("[1]", "expected a JSON object")])
def test_a_damaged_experiment_file_is_named(tmp_path, content, match):
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "experiment.json").write_text(content)
    line = assert_one_line_error(invoke(experiment, "--output", tmp_path / "e", *EXPERIMENT), match=match)
    assert str(tmp_path / "e" / "experiment.json") in line


def test_a_damaged_evaluation_file_is_named(tmp_path):
    config = ExperimentConfig(output=str(tmp_path / "e"), datasets=("2-moons",), methods=("ll",), lrs=(0.01,),
                              batch_sizes=(32,), seeds=1, epochs=1, progress=False)
    folder = RunSpec("2-moons", "ll", 0.01, 32, 0).folder(config)
    folder.mkdir(parents=True)
    (folder / "eval-val.json").write_text("{\"nll\": 1.")
    with pytest.raises(ValueError, match=f"{folder / 'eval-val.json'} is damaged"):
        Experiment(config).run()


def test_a_corrupt_feature_cache_is_named(tmp_path):
    (tmp_path / "e" / "features").mkdir(parents=True)
    (tmp_path / "e" / "features" / "digits.pt").write_bytes(b"\x00not a file of tensors")
    arguments = [a if a != "2-moons" else "digits" for a in EXPERIMENT]
    line = assert_one_line_error(invoke(experiment, "--output", tmp_path / "e", *arguments),
                                 match=str(tmp_path / "e" / "features" / "digits.pt"))
    assert "delete it to train the features again" in line


# -- unclear or wrong exit codes ---------------------------------------------------------------------------------
@pytest.mark.parametrize("command, args, match", [
    (train, ["--seed", str(2**64)], "--seed"),
    (sample, ["--checkpoint", "run", "--seed", str(2**64)], "--seed"),
    (train, ["--objective", "adv", "--nll-weight", "nan"], "--nll-weight"),
    (train, ["--lr", "inf"], "--lr"),
    (experiment, ["--output", "e", "--nll-weight", "nan"], "--nll-weight"),
])
def test_out_of_range_numbers_name_the_option(command, args, match):
    line = assert_one_line_error(invoke(command, *args), match=match)
    assert "not a finite number" in line or "range" in line


def test_the_same_experiment_folder_spelled_another_way_is_the_same(tmp_path):
    settings = dict(datasets=("2-moons",), methods=("ll",), lrs=(0.01,), batch_sizes=(32,), seeds=1, epochs=1)
    Experiment(ExperimentConfig(output="e", **settings))
    Experiment(ExperimentConfig(output="./e", **settings))
    Experiment(ExperimentConfig(output=str(tmp_path / "e"), **settings))


INTERRUPT_WHILE_IMPORTING_TORCH = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "torch._C":
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
"""


@pytest.mark.parametrize("command", ["train", "sample", "experiment"])
def test_an_interruption_during_start_up_is_one_line_with_exit_code_130(command):
    process = run_script(command, "--help", prelude=INTERRUPT_WHILE_IMPORTING_TORCH)
    assert_one_line(process, 130, "interrupted")


INTERRUPT_IN_THE_FIRST_EPOCH = """
import os, signal, time
from pyro_spn.train import trainer
def epoch(self, number):
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except KeyboardInterrupt:
        if {surfaces_as!r}:
            raise RuntimeError("an interruption that C code turned into another error") from None
        raise
trainer.Trainer._epoch = epoch
"""


@pytest.mark.parametrize("surfaces_as", ["", "RuntimeError"])
@pytest.mark.parametrize("command", ["train", "experiment"])
def test_an_interruption_while_running_exits_with_code_130(tmp_path, command, surfaces_as):
    args = [*TINY, "--output", str(tmp_path / "run")] if command == "train" else [*EXPERIMENT, "--output",
                                                                                    str(tmp_path / "e")]
    process = run_script(command, *args, prelude=INTERRUPT_IN_THE_FIRST_EPOCH.format(surfaces_as=surfaces_as))
    assert_one_line(process, 130, "interrupted")


def test_a_worker_that_dies_is_one_line(tmp_path):
    with pytest.raises(ChildProcessError, match="a worker process died"):
        list(protocol_module._map(os._exit, [3, 3], jobs=2))


# -- the bundled digits' cache -----------------------------------------------------------------------------------
def test_the_digits_leave_no_data_folder_in_the_working_folder(tmp_path, cache):
    result = invoke(train, "--output", tmp_path / "run", *TINY, "--epochs", "1")
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["run"]
    assert stat.S_IMODE((cache / "data").stat().st_mode) == 0o700
    assert stat.S_IMODE((cache / "data" / "digits-v1.h5").stat().st_mode) == 0o600
    result = invoke(train, "--output", tmp_path / "other", *TINY, "--epochs", "1", "--data-root", tmp_path / "mine")
    assert result.exit_code == 0, result.output
    assert [p.name for p in (tmp_path / "mine" / "cache").iterdir()] == ["digits-v1.h5"]  # a given root: its cache


def test_an_unsafe_data_cache_is_not_read(tmp_path, monkeypatch):
    """A cache file someone else could have written is ignored (and replaced) in the private cache folder."""
    from pyro_spn.data import images as image_module
    from pyro_spn.data import load_dataset

    monkeypatch.setenv("PYRO_SPN_CACHE_DIR", str(tmp_path / "cache"))
    first = load_dataset("digits")
    cached = tmp_path / "cache" / "data" / "digits-v1.h5"
    cached.chmod(0o666)
    calls = []
    decode = image_module.decode
    monkeypatch.setattr(image_module, "decode", lambda *args: calls.append(args) or decode(*args))
    assert torch.equal(load_dataset("digits").train, first.train) and len(calls) == 1
    assert stat.S_IMODE(cached.stat().st_mode) == 0o600
    os.chmod(tmp_path / "cache" / "data", 0o777)
    with pytest.warns(RuntimeWarning, match="not caching decoded images"):
        load_dataset("digits")
    assert len(calls) == 2


def test_interruption_signal_handler_is_restored():
    """The commands hand SIGINT back as they found it (tests and embedding programs keep their handler)."""
    before = signal.getsignal(signal.SIGINT)
    invoke(train, "--help")
    assert signal.getsignal(signal.SIGINT) is before
