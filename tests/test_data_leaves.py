"""Image data for every leaf family of the command line: counts for the count families, dequantized values in
``(0, 1)`` for the continuous ones, and back to pixels; the preprocessing survives a weights-only checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_spn import RatSPN
from pyro_spn.data import LEAVES, Dequantize, Preprocessing, load_custom, load_dataset
from pyro_spn.leaves import Beta, Exponential, Gamma, Geometric, Leaf, LogNormal, NegativeBinomial, Poisson
from pyro_spn.train.model import DataInfo

COUNT_LEAVES: dict[str, Leaf] = {"poisson": Poisson(), "geometric": Geometric(),
                                 "negative-binomial": NegativeBinomial(total_count=16)}
CONTINUOUS_LEAVES: dict[str, Leaf] = {"exponential": Exponential(), "gamma": Gamma(), "lognormal": LogNormal(),
                                      "beta": Beta()}


def test_every_family_has_a_command_line_name() -> None:
    assert set(LEAVES) == {"binomial", "normal", "bernoulli", *COUNT_LEAVES, *CONTINUOUS_LEAVES}


@pytest.mark.parametrize("leaf", sorted(COUNT_LEAVES))
def test_count_families_model_the_integer_pixel_values(tmp_path: Path, leaf: str) -> None:
    d = load_dataset("digits", leaf=leaf, cache_dir=tmp_path)
    counts = load_dataset("digits", leaf="binomial", cache_dir=tmp_path)
    assert d.leaf == COUNT_LEAVES[leaf]
    assert torch.equal(d.train, counts.train) and torch.equal(d.test, counts.test)
    assert torch.equal(d.preprocessing.inverse(d.train), counts.preprocessing.inverse(counts.train))
    assert (d.preprocessing.inverse(torch.full((1, 1, 8, 8), 40.0)) == 1).all()  # counts beyond 16: white


@pytest.mark.parametrize("leaf", sorted(CONTINUOUS_LEAVES))
def test_continuous_families_see_dequantized_values_in_the_open_unit_interval(tmp_path: Path, leaf: str) -> None:
    d = load_dataset("digits", leaf=leaf, cache_dir=tmp_path)
    counts = load_dataset("digits", leaf="binomial", cache_dir=tmp_path)
    assert d.leaf == CONTINUOUS_LEAVES[leaf] and isinstance(d.preprocessing, Dequantize)
    for split, raw in ((d.train, counts.train), (d.test, counts.test)):
        assert 0 < split.min() and split.max() < 1
        assert torch.equal(torch.floor(split * 17), raw)  # (count + u) / 17 with u in (0, 1)
    back = d.preprocessing.inverse(d.train)
    assert back.min() >= 0 and back.max() <= 1 and (back - counts.train / 16).abs().max() <= 0.5 / 16 + 1e-6
    assert (d.preprocessing.inverse(torch.full((1, 1, 8, 8), 5.0)) == 1).all()  # beyond (0, 1): clamped
    again = load_dataset("digits", leaf=leaf, cache_dir=tmp_path)
    assert torch.equal(again.train, d.train)  # the noise is drawn from the seed
    assert not torch.equal(load_dataset("digits", leaf=leaf, seed=1, cache_dir=tmp_path).train.sort().values,
                           d.train.sort().values)
    torch.save(d.preprocessing.state_dict(), tmp_path / "state.pt")
    restored = Preprocessing.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert isinstance(restored, Dequantize) and torch.equal(restored.forward(counts.test * 1), d.test)


@pytest.mark.parametrize("leaf", sorted({**COUNT_LEAVES, **CONTINUOUS_LEAVES}))
def test_a_circuit_of_the_family_gives_the_data_finite_likelihoods(tmp_path: Path, leaf: str) -> None:
    d = load_dataset("digits", leaf=leaf, num_samples=20, cache_dir=tmp_path)
    spn = RatSPN(d.event_shape, depth=2, num_repetitions=2, num_sums=2, num_leaves=2, leaf=d.leaf)
    assert bool(d.leaf.support.check(d.train).all())
    with torch.no_grad():
        assert torch.isfinite(spn(d.test)).all()


def test_a_custom_image_array_takes_the_new_families(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, size=(40, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "images.npy", images)
    d = load_custom(tmp_path / "images.npy", leaf="gamma")
    assert d.leaf == Gamma() and 0 < d.train.min() and d.train.max() < 1
    assert load_custom(tmp_path / "images.npy", leaf="negative-binomial").leaf == NegativeBinomial(total_count=255)


def test_unknown_leaf_names_list_the_accepted_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leaf must be one of .*negative-binomial.*lognormal"):
        load_dataset("digits", leaf="weibull", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="'auto' or 'normal'"):
        load_dataset("2-moons", leaf="poisson")
    with pytest.raises(ValueError, match="seed"):
        Dequantize(16, seed=-1)


@pytest.mark.parametrize("leaf", sorted({**COUNT_LEAVES, **CONTINUOUS_LEAVES, "binomial": None, "bernoulli": None}))
def test_sample_based_objectives_see_pixels_in_the_unit_interval(tmp_path: Path, leaf: str) -> None:
    """The scale that the discriminator, the kernels and the reconstruction loss divide model-space data by:
    ``max_value`` for every count family (not only Binomial), 1 where the data already lie in ``[0, 1]``; a
    checkpoint's data description keeps it, and one of an earlier version without it falls back to the Binomial
    ``total_count``."""
    d = load_dataset("digits", leaf=leaf, num_samples=20, cache_dir=tmp_path)
    assert d.scale == (16.0 if leaf in COUNT_LEAVES or leaf == "binomial" else 1.0)
    scaled = d.train / d.scale
    assert 0 <= scaled.min() and scaled.max() <= 1
    info = DataInfo.of(d)
    assert info.scale == d.scale
    restored = DataInfo.from_state_dict(torch.load(_saved(tmp_path, info.state_dict()), weights_only=True))
    assert restored.scale == d.scale and restored == info
    earlier = {key: value for key, value in info.state_dict().items() if key != "data_scale"}
    assert DataInfo.from_state_dict(earlier).scale == (16.0 if leaf == "binomial" else 1.0)


def _saved(tmp_path: Path, state: dict) -> Path:
    torch.save(state, tmp_path / "info.pt")
    return tmp_path / "info.pt"
