"""Files written by earlier versions: circuits and checkpoints of pyro_spn 0.1 load, evaluate as they did, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from pyro_spn import RatSPN
from pyro_spn.data import load_dataset
from pyro_spn.leaves import Bernoulli, Mixed, Normal
from pyro_spn.train import Trainer
from pyro_spn.train.checkpoint import load_checkpoint
from pyro_spn.train.sample import SavedRun

DATA = Path(__file__).parent / "data" / "v0.1"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("name", ["ll", "pae"])
def test_version_1_checkpoints_evaluate_as_they_did(name):
    saved = SavedRun.load(DATA / f"{name}-checkpoint.pt", device="cpu")
    x = load_dataset("digits", seed=0).test[:5]
    expected = torch.tensor(json.loads((DATA / "expected.json").read_text())[name])
    torch.testing.assert_close(saved.model.log_likelihood(x), expected, rtol=1e-5, atol=1e-3)
    assert saved.config.estimator == "soft"  # the 0.1 field straight_through: false
    assert saved.model.sample(3, 3).shape == (3, 1, 8, 8)


def test_version_1_checkpoints_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(DATA / "pae-checkpoint.pt", run / "checkpoint.pt")
    trainer = Trainer.resume(run, epochs=2, progress=False)
    assert trainer.epoch == 1
    records = trainer.fit()
    assert [r["epoch"] for r in records] == [2]
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


@pytest.mark.parametrize("leaf", [Normal(), Mixed([(Bernoulli(), 3), (Normal(), 2)])])
def test_version_1_state_dicts_load(leaf):
    """A 0.1 state dict: the structure's buffers at the top, the leaf parameters under ``leaf.`` (a Mixed leaf's
    under ``leaf.groups.<g>.``, with its ``feature_type`` buffer), no version metadata."""
    spn = RatSPN(5, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, leaf=leaf, seed=1)
    old = {}
    for key, value in spn.state_dict().items():
        if key.startswith("leaf_layer."):
            name = key[len("leaf_layer."):]
            if name in ("leaf_slots", "variable_region"):
                key = name
            elif isinstance(leaf, Mixed):
                group, parameter = name[1:].split("_", 1)
                key = f"leaf.groups.{group}.{parameter}"
            else:
                key = f"leaf.{name}"
        old[key] = value.clone() + (0.5 if value.is_floating_point() else 0)
    if isinstance(leaf, Mixed):
        old["leaf.feature_type"] = torch.zeros(1, 5, dtype=torch.long)
    fresh = RatSPN(5, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, leaf=leaf, seed=1)
    fresh.load_state_dict(old)
    for key, value in fresh.state_dict().items():
        expected = spn.state_dict()[key]
        assert torch.equal(value, expected + 0.5 if value.is_floating_point() else expected), key
