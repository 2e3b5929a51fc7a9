"""``pyrospn-train --leaf`` with every leaf family beyond binomial, normal and bernoulli, end to end on the bundled
digits (tiny circuits, one epoch), and an EM run with one of them; samples go back to pictures in ``[0, 1]``."""

from __future__ import annotations

import json
import math

import h5py
import pytest
import torch
from click.testing import CliRunner

from pyro_spn.leaves import leaf_from_config
from pyro_spn.train.cli import sample, train

NEW_LEAVES = ("poisson", "geometric", "negative-binomial", "exponential", "gamma", "beta", "lognormal")
TINY = ["--depth", "2", "--repetitions", "2", "--sums", "2", "--leaves", "2", "--batch-size", "64",
        "--num-final-samples", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    """Every test in its own folder (the default data root and run folders stay out of the repository)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYRO_SPN_CACHE_DIR", str(tmp_path / "cache"))


def _train(*args: str) -> None:
    result = CliRunner().invoke(train, [str(a) for a in args])
    assert result.exit_code == 0, result.output


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("leaf", NEW_LEAVES)
def test_train_and_sample_digits_with_each_new_leaf(tmp_path, leaf):
    run = tmp_path / "run"
    _train("--leaf", leaf, "--output", run, "--epochs", "1", "--max-batches-per-epoch", "2", *TINY)
    records = _records(run)
    assert len(records) == 1 and math.isfinite(records[0]["val_nll"])
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert leaf_from_config(state["data"]["leaf"]).name == leaf.replace("-", "_")
    with h5py.File(run / "samples.h5") as file:
        samples = file["samples"][()]
    assert samples.shape == (4, 1, 8, 8) and 0 <= samples.min() and samples.max() <= 1
    result = CliRunner().invoke(sample, ["--checkpoint", str(run), "--num-samples", "4", "--inpaint", "top",
                                         "--hdf5", str(tmp_path / "inpainted.h5")])
    assert result.exit_code == 0, result.output


def test_em_trains_negative_binomial_leaves(tmp_path):
    run = tmp_path / "run"
    _train("--leaf", "negative-binomial", "--optimizer", "em", "--output", run, "--epochs", "2",
           "--max-batches-per-epoch", "4", *TINY)
    nll = [record["val_nll"] for record in _records(run)]
    assert len(nll) == 2 and nll[1] < nll[0]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["em"]["num_steps"] == 8
