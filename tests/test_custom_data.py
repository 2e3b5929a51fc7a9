"""A user's data set from a path (:mod:`pyro_spn.data.custom`): folders of images, ``.npy`` arrays, HDF5 files,
their splits, representations and errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

from pyro_spn.data import CustomDataError, event_shape_of, load_custom, load_dataset
from pyro_spn.data.custom import custom_name, safe_name
from pyro_spn.leaves import Bernoulli, Binomial, Normal


def _pixels(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def _write_images(folder: Path, images: np.ndarray, suffix: str = ".png") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"img{i:03d}{suffix}")


def _all(dataset_splits: tuple[torch.Tensor, ...]) -> torch.Tensor:
    return torch.cat(dataset_splits)


def test_a_folder_of_grayscale_pngs_is_an_image_set_of_counts(tmp_path: Path) -> None:
    raw = _pixels(20, (5, 4))
    _write_images(tmp_path / "gray", raw)
    (tmp_path / "gray" / "notes.txt").write_text("not an image")
    data = load_dataset(f"path:{tmp_path / 'gray'}")
    assert data.is_image and data.event_shape == (1, 5, 4) and data.leaf == Binomial(total_count=255)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (16, 2, 2)
    assert data.train_labels is None
    values = _all((data.train, data.val, data.test)).reshape(20, -1)
    expected = torch.from_numpy(raw).float().reshape(20, -1)
    assert sorted(map(tuple, values.tolist())) == sorted(map(tuple, expected.tolist()))  # the pixels, as counts
    assert event_shape_of(f"path:{tmp_path / 'gray'}") == (1, 5, 4)
    again = load_dataset(data.name)  # the data set's name reloads it, with the same split
    assert torch.equal(again.train, data.train)


def test_rgb_and_gray_images_in_class_subfolders_give_rgb_images_with_labels(tmp_path: Path) -> None:
    _write_images(tmp_path / "set" / "cats", _pixels(6, (4, 4, 3), seed=1), ".jpg")
    _write_images(tmp_path / "set" / "dogs", _pixels(6, (4, 4), seed=2))
    data = load_custom(tmp_path / "set", leaf="bernoulli", seed=3)
    assert data.event_shape == (3, 4, 4) and data.leaf == Bernoulli()
    labels = torch.cat([data.train_labels, data.val_labels, data.test_labels])  # type: ignore[list-item]
    assert sorted(labels.tolist()) == [0] * 6 + [1] * 6
    assert set(_all((data.train, data.val, data.test)).unique().tolist()) <= {0.0, 1.0}
    dogs = _all((data.train, data.val, data.test))[labels == 1]
    assert torch.equal(dogs[:, 0], dogs[:, 1]) and torch.equal(dogs[:, 0], dogs[:, 2])  # gray replicated


def test_npy_integer_arrays_are_images_in_either_channel_layout(tmp_path: Path) -> None:
    first, last = _pixels(30, (3, 6, 7)), _pixels(30, (6, 7, 3))
    np.save(tmp_path / "first.npy", first)
    np.save(tmp_path / "last.npy", last.astype(np.int64))
    np.save(tmp_path / "plain.npy", _pixels(30, (6, 7)).astype(np.int32))
    assert load_dataset(f"path:{tmp_path / 'first.npy'}").event_shape == (3, 6, 7)
    channels_last = load_dataset(f"path:{tmp_path / 'last.npy'}", leaf="binomial", seed=1)
    assert channels_last.event_shape == (3, 6, 7)
    restored = sorted(map(tuple, _all((channels_last.train, channels_last.val, channels_last.test))
                          .reshape(30, -1).tolist()))
    assert restored == sorted(map(tuple, torch.from_numpy(last).permute(0, 3, 1, 2).float().reshape(30, -1).tolist()))
    standardized = load_dataset(f"path:{tmp_path / 'plain.npy'}", leaf="normal")
    assert standardized.event_shape == (1, 6, 7) and standardized.leaf == Normal()
    assert abs(float(standardized.train.mean())) < 1e-4
    assert event_shape_of(f"path:{tmp_path / 'last.npy'}") == (3, 6, 7)


def test_float_arrays_are_continuous_features_split_deterministically(tmp_path: Path) -> None:
    points = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float64)
    np.save(tmp_path / "points.npy", points)
    name = f"path:{tmp_path / 'points.npy'}"
    data = load_dataset(name, seed=7)
    assert not data.is_image and data.leaf == Normal() and data.event_shape == (3,)
    assert (data.train.shape[0], data.val.shape[0], data.test.shape[0]) == (40, 5, 5)
    assert data.train.dtype == torch.float32
    assert torch.equal(load_dataset(name, seed=7).test, data.test)
    assert not torch.equal(load_dataset(name, seed=8).test, data.test)
    torch.testing.assert_close(torch.sort(_all((data.train, data.val, data.test)), dim=0).values,
                               torch.sort(torch.from_numpy(points).float(), dim=0).values)
    assert event_shape_of(name) == (3,)
    assert load_dataset(name, num_samples=10).train.shape[0] == 10
    with pytest.raises(ValueError, match="leaf"):
        load_dataset(name, leaf="binomial")


def test_hdf5_files_by_their_only_dataset_or_a_named_one(tmp_path: Path) -> None:
    with h5py.File(tmp_path / "one.h5", "w") as file:
        file.create_dataset("group/images", data=_pixels(12, (4, 4)))
    with h5py.File(tmp_path / "two.hdf5", "w") as file:
        file.create_dataset("images", data=_pixels(12, (4, 4)))
        file.create_dataset("features", data=np.ones((12, 2)))
    assert load_dataset(f"path:{tmp_path / 'one.h5'}").event_shape == (1, 4, 4)
    features = load_dataset(f"path:{tmp_path / 'two.hdf5'}#features")
    assert features.event_shape == (2,) and not features.is_image
    assert features.name.endswith("#features") and safe_name(features.name) == "custom-two-features"
    assert custom_name(f"{tmp_path / 'two.hdf5'}#features") == features.name
    with pytest.raises(CustomDataError, match=r"two\.hdf5.*2 datasets"):
        load_dataset(f"path:{tmp_path / 'two.hdf5'}")
    with pytest.raises(CustomDataError, match="no dataset 'labels'"):
        load_dataset(f"path:{tmp_path / 'two.hdf5'}#labels")


def test_mixed_image_sizes_and_empty_folders_are_refused_naming_the_path(tmp_path: Path) -> None:
    _write_images(tmp_path / "mixed", _pixels(6, (4, 4)))
    Image.fromarray(_pixels(1, (5, 4))[0]).save(tmp_path / "mixed" / "odd.png")
    with pytest.raises(CustomDataError, match=r"mixed.*2 different sizes"):
        load_dataset(f"path:{tmp_path / 'mixed'}")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(CustomDataError, match=r"empty.*empty folder"):
        load_dataset(f"path:{tmp_path / 'empty'}")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "a.png").write_bytes(b"not a png")
    with pytest.raises(CustomDataError, match=r"a\.png.*cannot read"):
        load_dataset(f"path:{tmp_path / 'broken'}")


def test_bad_files_are_refused_naming_the_path_and_the_problem(tmp_path: Path) -> None:
    features = np.random.default_rng(0).normal(size=(20, 2))
    features[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", features)
    with pytest.raises(CustomDataError, match=r"nan\.npy.*1 non-finite"):
        load_dataset(f"path:{tmp_path / 'nan.npy'}")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 12, dtype=object), allow_pickle=True)
    with pytest.raises(CustomDataError, match=r"objects\.npy.*not a plain numeric"):
        load_dataset(f"path:{tmp_path / 'objects.npy'}")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(CustomDataError, match=r"data\.csv.*unknown extension"):
        load_dataset(f"path:{tmp_path / 'data.csv'}")
    with pytest.raises(CustomDataError, match=r"missing\.npy.*no such file"):
        load_dataset(f"path:{tmp_path / 'missing.npy'}")
    np.save(tmp_path / "range.npy", np.full((12, 3, 3), 300, dtype=np.int16))
    with pytest.raises(CustomDataError, match=r"range\.npy.*0\.\.255"):
        load_dataset(f"path:{tmp_path / 'range.npy'}")
    np.save(tmp_path / "few.npy", np.zeros((5, 2)))
    with pytest.raises(CustomDataError, match=r"few\.npy.*5 examples"):
        load_dataset(f"path:{tmp_path / 'few.npy'}")
    np.save(tmp_path / "cube.npy", np.zeros((12, 6, 6, 6)))
    with pytest.raises(CustomDataError, match=r"cube\.npy.*float array"):
        load_dataset(f"path:{tmp_path / 'cube.npy'}")
    with pytest.raises(CustomDataError, match="needs a path"):
        load_dataset("path:")
