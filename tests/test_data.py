"""Data sets: the synthetic 2-D sets and their exact densities, digits, preprocessing, the HDF5 cache, and the
torchvision paths on tiny files written in each data set's real on-disk format.

torchvision checks the md5 of the CIFAR-10, SVHN and CelebA files against the real files' checksums, which
tiny test files cannot match: those tests replace only that md5 check (``check_integrity`` in the torchvision
module) by a plain existence check; everything else (file discovery, parsing, layout) is torchvision's own.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.io
import torch
import torchvision.datasets.celeba
import torchvision.datasets.cifar
import torchvision.datasets.svhn
from PIL import Image
from scipy import stats
from scipy.special import logsumexp
from sklearn.datasets import load_digits

from pyro_spn.data import (
    DATASETS,
    IMAGE_DATASETS,
    SYNTHETIC_DATASETS,
    Dataset,
    DatasetNotFoundError,
    Preprocessing,
    load_dataset,
)
from pyro_spn.data import images as image_module
from pyro_spn.leaves import Bernoulli, Binomial, Normal

MIXTURE_SETS = ("2-clusters", "varied", "aniso", "9-clusters")
LEAVES = ("binomial", "normal", "bernoulli")


def _rows(x: torch.Tensor) -> set[tuple[float, ...]]:
    return {tuple(row) for row in x.flatten(1).tolist()}


def _all_points(d: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.cat([d.train, d.val, d.test]), torch.cat([d.train_labels, d.val_labels, d.test_labels])


# --------------------------------------------------------------------------------------------- synthetic sets


def test_dataset_names() -> None:
    assert SYNTHETIC_DATASETS == ("2-clusters", "varied", "aniso", "9-clusters", "2-moons", "2-circles")
    assert IMAGE_DATASETS == ("digits", "mnist", "svhn", "cifar10", "celeba")
    assert DATASETS == SYNTHETIC_DATASETS + IMAGE_DATASETS


@pytest.mark.parametrize("name", SYNTHETIC_DATASETS)
def test_synthetic_shapes_splits_and_seeds(name: str) -> None:
    d = load_dataset(name)
    assert (d.train.shape, d.val.shape, d.test.shape) == ((2400, 2), (300, 2), (300, 2))
    assert d.train.dtype == d.val.dtype == d.test.dtype == torch.float32
    assert d.train_labels.dtype == torch.long and d.train_labels.shape == (2400,)
    assert (d.event_shape, d.leaf, d.is_image) == ((2,), Normal(), False)
    assert torch.isfinite(d.train).all()
    train, val, test = _rows(d.train), _rows(d.val), _rows(d.test)
    assert len(train) == 2400 and len(val) == 300 and len(test) == 300
    assert not (train & val or train & test or val & test)
    # identity preprocessing: model space is raw coordinates
    assert torch.equal(d.preprocessing.forward(d.test), d.test) and torch.equal(d.preprocessing.inverse(d.test), d.test)
    assert type(Preprocessing.from_state_dict(d.preprocessing.state_dict())) is type(d.preprocessing)

    again = load_dataset(name, seed=0)
    assert torch.equal(again.train, d.train) and torch.equal(again.test_labels, d.test_labels)
    other = load_dataset(name, seed=1, num_samples=1000)
    assert (other.train.shape[0], other.val.shape[0], other.test.shape[0]) == (800, 100, 100)
    assert not torch.equal(other.train[:100], d.train[:100])


@pytest.mark.parametrize("name", MIXTURE_SETS)
def test_true_density_integrates_to_one(name: str) -> None:
    d = load_dataset(name, num_samples=100)
    margin = 8 * float(d.mode_scales.max())
    lo, hi = d.modes.min(0).values - margin, d.modes.max(0).values + margin
    xs = torch.linspace(float(lo[0]), float(hi[0]), 500, dtype=torch.float64)
    ys = torch.linspace(float(lo[1]), float(hi[1]), 500, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), -1).reshape(-1, 2)
    density = d.true_log_density(grid).exp().reshape(500, 500)
    assert density.dtype == torch.float64
    mass = torch.trapezoid(torch.trapezoid(density, ys, dim=1), xs)
    assert abs(float(mass) - 1.0) < 1e-3


@pytest.mark.parametrize("name", MIXTURE_SETS)
def test_true_density_matches_scipy(name: str) -> None:
    d = load_dataset(name, num_samples=500)
    points = torch.cat([d.test, torch.randn(50, 2, generator=torch.Generator().manual_seed(3)) * 6])
    reference = logsumexp([
        np.log(float(w)) + stats.multivariate_normal(m.numpy(), c.numpy()).logpdf(points.numpy())
        for w, m, c in zip(d.mode_weights.double(), d.modes.double(), d.mode_covariances.double(), strict=True)
    ], axis=0)
    ours = d.true_log_density(points)
    assert ours.shape == (points.shape[0],) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=r"\[M, 2\]"):
        d.true_log_density(points[:, :1])


@pytest.mark.parametrize("name", MIXTURE_SETS)
def test_modes_match_cluster_statistics(name: str) -> None:
    d = load_dataset(name, num_samples=20000, seed=5)
    k = d.modes.shape[0]
    assert d.modes.shape == (k, 2) and d.mode_scales.shape == (k,) and d.mode_covariances.shape == (k, 2, 2)
    assert float(d.mode_weights.sum()) == pytest.approx(1.0)
    points, labels = _all_points(d)
    for j in range(k):
        cluster = points[labels == j].double()
        standard_error = float(d.mode_scales[j]) / cluster.shape[0] ** 0.5
        assert torch.allclose(cluster.mean(0), d.modes[j].double(), atol=5 * standard_error)
        assert torch.allclose(torch.cov(cluster.T), d.mode_covariances[j].double(),
                              atol=0.1 * float(d.mode_scales[j]) ** 2)
        assert float(d.mode_scales[j]) ** 2 == pytest.approx(float(torch.linalg.eigvalsh(d.mode_covariances[j])[-1]))
    covariances = d.mode_covariances
    if name == "aniso":
        assert k == 3 and (covariances[:, 0, 1].abs() > 0.1).all()
    else:
        assert torch.equal(covariances[:, 0, 1], torch.zeros(k))
        assert torch.allclose(covariances[:, 0, 0], covariances[:, 1, 1])
    if name == "varied":
        assert k == 3 and len(set(d.mode_scales.tolist())) == 3
    if name == "9-clusters":
        assert len(set(d.mode_scales.tolist())) == 1
        assert sorted(set(d.modes[:, 0].tolist())) == sorted(set(d.modes[:, 1].tolist())) and len(
            set(d.modes[:, 0].tolist())) == 3


def test_moons_and_circles() -> None:
    for name in ("2-moons", "2-circles"):
        d = load_dataset(name)
        assert d.true_log_density is None and d.modes is None and d.mode_scales is None
        assert set(d.train_labels.tolist()) == {0, 1}
    points, labels = _all_points(load_dataset("2-circles"))
    radii = points.norm(dim=1)
    assert float(radii[labels == 0].mean()) == pytest.approx(1.0, abs=0.05)
    assert float(radii[labels == 1].mean()) == pytest.approx(0.5, abs=0.05)


# ---------------------------------------------------------------------------------------------- arguments


def test_bad_arguments_name_the_argument() -> None:
    with pytest.raises(ValueError, match=r"name must be one of .*mnist.*got 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match=r"leaf must be one of .*bernoulli.*got 'weibull'"):
        load_dataset("digits", leaf="weibull")
    for leaf in ("binomial", "bernoulli"):
        with pytest.raises(ValueError, match=r"leaf must be 'auto' or 'normal'"):
            load_dataset("2-moons", leaf=leaf)
    with pytest.raises(ValueError, match="num_samples"):
        load_dataset("varied", num_samples=3)
    with pytest.raises(TypeError, match="seed"):
        load_dataset("varied", seed=1.5)


def test_preprocessing_state_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"state\['kind'\]"):
        Preprocessing.from_state_dict({"kind": "whiten"})


# ------------------------------------------------------------------------------------------------- digits


@pytest.fixture
def digits_raw() -> torch.Tensor:
    return torch.from_numpy(load_digits().images).to(torch.float32).unsqueeze(1)


def test_digits_binomial(tmp_path: Path, digits_raw: torch.Tensor) -> None:
    d = load_dataset("digits", cache_dir=tmp_path)
    assert (d.leaf, d.is_image, d.event_shape) == (Binomial(total_count=16), True, (1, 8, 8))
    assert (d.train.shape, d.val.shape, d.test.shape) == ((1437, 1, 8, 8), (180, 1, 8, 8), (180, 1, 8, 8))
    assert d.train.dtype == torch.float32 and d.train_labels.dtype == torch.long
    everything = torch.cat([d.train, d.val, d.test])
    assert torch.equal(everything, everything.round()) and everything.min() == 0 and everything.max() == 16
    assert set(d.train_labels.tolist()) == set(range(10)) and d.test_labels.shape == (180,)
    # a partition of the 1797 images: same multiset of (image, label) rows
    labels = torch.cat([d.train_labels, d.val_labels, d.test_labels]).to(torch.float32)
    ours = torch.cat([everything.flatten(1), labels[:, None]], 1)
    theirs = torch.cat([digits_raw.flatten(1), torch.from_numpy(load_digits().target).float()[:, None]], 1)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))
    same = load_dataset("digits", cache_dir=tmp_path / "other")
    assert torch.equal(same.train, d.train) and torch.equal(same.val_labels, d.val_labels)
    assert not torch.equal(load_dataset("digits", seed=1, cache_dir=tmp_path).train, d.train)
    small = load_dataset("digits", num_samples=50, cache_dir=tmp_path)
    assert small.train.shape[0] == small.val.shape[0] == small.test.shape[0] == 50
    assert torch.equal(small.train, d.train[:50])


@pytest.mark.parametrize("leaf", LEAVES)
def test_digits_preprocessing_round_trip(tmp_path: Path, leaf: str) -> None:
    d = load_dataset("digits", leaf=leaf, cache_dir=tmp_path)
    counts = load_dataset("digits", leaf="binomial", cache_dir=tmp_path)
    images = counts.preprocessing.inverse(counts.train)  # [0, 1] images
    assert torch.allclose(images * 16, counts.train)
    back = d.preprocessing.inverse(d.train)
    assert back.shape == d.train.shape and back.min() >= 0 and back.max() <= 1
    if leaf == "binomial":
        assert d.leaf == Binomial(total_count=16) and torch.equal(back, images)
    elif leaf == "normal":
        assert d.leaf == Normal()
        assert torch.allclose(back, images, atol=1e-5)
        varying = counts.train.flatten(1).std(0) > 0
        assert torch.allclose(d.train.flatten(1).mean(0), torch.zeros(64), atol=1e-4)
        assert torch.allclose(d.train.flatten(1).std(0, unbiased=False)[varying], torch.ones(int(varying.sum())),
                              atol=1e-3)
        assert torch.isfinite(d.test).all()
        assert (d.preprocessing.inverse(torch.full((1, 1, 8, 8), 1e3)) == 1).all()  # clamped
    else:
        assert d.leaf == Bernoulli() and set(d.train.unique().tolist()) == {0.0, 1.0}
        assert torch.equal(back, (counts.train > 8).float())
    # the state survives a weights-only checkpoint
    torch.save(d.preprocessing.state_dict(), tmp_path / "state.pt")
    restored = Preprocessing.from_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert type(restored) is type(d.preprocessing)
    assert torch.equal(restored.forward(counts.test), d.test)
    assert torch.equal(restored.inverse(d.test), d.preprocessing.inverse(d.test))


def test_digits_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    decode = image_module.decode
    monkeypatch.setattr(image_module, "decode", lambda *args: calls.append(args) or decode(*args))
    first = load_dataset("digits", leaf="normal", root=tmp_path)
    assert len(calls) == 1
    path = tmp_path / "cache" / "digits-v1.h5"  # default cache_dir: <root>/cache
    assert h5py.is_hdf5(path) and os.listdir(tmp_path / "cache") == [path.name]  # no temp file left behind
    with h5py.File(path, "r") as file:
        assert file["all/images"].dtype == np.uint8 and file["all/images"].shape == (1797, 1, 8, 8)
        assert file["all/labels"].shape == (1797,)

    def fail(*args: object) -> None:
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(image_module, "decode", fail)
    second = load_dataset("digits", leaf="normal", root=tmp_path)
    assert torch.equal(second.train, first.train) and torch.equal(second.test_labels, first.test_labels)
    assert load_dataset("digits", leaf="bernoulli", seed=3, root=tmp_path).train.shape == (1437, 1, 8, 8)

    path.write_bytes(b"not an hdf5 file")  # a broken cache is rebuilt
    monkeypatch.setattr(image_module, "decode", decode)
    with pytest.warns(UserWarning, match="unreadable cache"):
        third = load_dataset("digits", leaf="normal", root=tmp_path)
    assert torch.equal(third.train, first.train) and h5py.is_hdf5(path)


# ------------------------------------------------------------------------------ torchvision on-disk formats


def _uint8(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _md5_free(monkeypatch: pytest.MonkeyPatch, module: object) -> None:
    """Replaces torchvision's md5 check in ``module`` by an existence check (tiny files cannot match the md5)."""
    monkeypatch.setattr(module, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))


def _check_train_val(d: Dataset, train_images: np.ndarray, train_labels: np.ndarray, n_val: int) -> None:
    """train + val are a partition of the official train split, val of size ``n_val``; labels travel along."""
    assert d.val.shape[0] == n_val and d.train.shape[0] == train_images.shape[0] - n_val
    ours = torch.cat([torch.cat([d.train, d.val]).flatten(1), torch.cat([d.train_labels, d.val_labels])[:, None]], 1)
    theirs = torch.cat([torch.from_numpy(train_images).float().flatten(1),
                        torch.from_numpy(train_labels).float()[:, None]], 1)
    assert sorted(map(tuple, ours.tolist())) == sorted(map(tuple, theirs.tolist()))


def test_mnist_files(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    data = {"train": (_uint8((30, 28, 28), 0), _uint8((30,), 1) % 10), "t10k": (_uint8((10, 28, 28), 2),
                                                                                  _uint8((10,), 3) % 10)}
    for prefix, (x, y) in data.items():
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, len(y)) + y.tobytes())
    d = load_dataset("mnist", root=tmp_path)
    assert (d.event_shape, d.leaf, d.test.shape) == ((1, 28, 28), Binomial(total_count=255), (10, 1, 28, 28))
    assert torch.equal(d.test, torch.from_numpy(data["t10k"][0]).float().unsqueeze(1))
    assert torch.equal(d.test_labels, torch.from_numpy(data["t10k"][1]).long())
    _check_train_val(d, data["train"][0][:, None], data["train"][1], n_val=3)
    binary = load_dataset("mnist", leaf="bernoulli", root=tmp_path)
    assert torch.equal(binary.test, (d.test > 127.5).float())


def test_cifar10_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {name: (_uint8((4, 3072), i), list(range(i, i + 4))) for i, name in
               enumerate([*(f"data_batch_{j}" for j in range(1, 6)), "test_batch"])}
    for name, (x, y) in batches.items():
        with open(folder / name, "wb") as file:
            pickle.dump({"batch_label": name, "data": x, "labels": y, "filenames": [f"{k}.png" for k in y]}, file)
    with open(folder / "batches.meta", "wb") as file:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"], "num_vis": 3072, "num_cases_per_batch": 4}, file)
    with pytest.raises(DatasetNotFoundError, match="corrupted"):  # torchvision's md5 check, not patched yet
        load_dataset("cifar10", root=tmp_path)
    _md5_free(monkeypatch, torchvision.datasets.cifar)
    d = load_dataset("cifar10", root=tmp_path, leaf="normal")
    assert d.event_shape == (3, 32, 32) and d.test.shape == (4, 3, 32, 32) and not isinstance(d.leaf, Binomial)
    # CIFAR rows are channel planes (R, G, B) of row-major 32 × 32 pixels
    images = d.preprocessing.inverse(d.test) * 255
    assert torch.allclose(images, torch.from_numpy(batches["test_batch"][0]).float().reshape(4, 3, 32, 32), atol=1e-3)
    train_x = np.concatenate([batches[f"data_batch_{j}"][0] for j in range(1, 6)]).reshape(20, 3, 32, 32)
    train_y = np.concatenate([batches[f"data_batch_{j}"][1] for j in range(1, 6)])
    _check_train_val(load_dataset("cifar10", root=tmp_path), train_x, train_y, n_val=2)


def test_svhn_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _md5_free(monkeypatch, torchvision.datasets.svhn)
    (tmp_path / "svhn").mkdir()
    data = {}
    for split, n in (("train", 20), ("test", 12)):
        x = _uint8((32, 32, 3, n), n)  # [H, W, C, N] as in the .mat files
        y = np.arange(n, dtype=np.uint8) % 10 + 1  # labels 1..10, 10 meaning digit 0
        scipy.io.savemat(tmp_path / "svhn" / f"{split}_32x32.mat", {"X": x, "y": y[:, None]})
        data[split] = (x.transpose(3, 2, 0, 1), y % 10)
    d = load_dataset("svhn", root=tmp_path)
    assert d.event_shape == (3, 32, 32) and d.test.shape == (12, 3, 32, 32)
    assert torch.equal(d.test, torch.from_numpy(data["test"][0].copy()).float())
    assert torch.equal(d.test_labels, torch.from_numpy(data["test"][1]).long()) and 0 in d.test_labels.tolist()
    _check_train_val(d, *data["train"], n_val=2)


def test_celeba_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _md5_free(monkeypatch, torchvision.datasets.celeba)
    folder = tmp_path / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    partition = [0, 0, 0, 1, 1, 2, 2]  # (torchvision cannot read a split of a single image)
    colors = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (120, 120, 20), (20, 120, 120), (90, 90, 90), (0, 0, 0)]
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    for name, color in zip(names, colors, strict=True):
        image = np.full((218, 178, 3), color, dtype=np.uint8)
        image[:20] = image[-20:] = 255  # outside the central 178 × 178 crop
        Image.fromarray(image).save(folder / "img_align_celeba" / name, quality=95)
    attributes = [f"Attr_{j}" for j in range(40)]
    landmarks = ["lefteye_x", "lefteye_y", "righteye_x", "righteye_y", "nose_x", "nose_y", "leftmouth_x",
                 "leftmouth_y", "rightmouth_x", "rightmouth_y"]
    files = {
        "list_eval_partition.txt": [f"{n} {p}" for n, p in zip(names, partition, strict=True)],
        "identity_CelebA.txt": [f"{n} {i + 100}" for i, n in enumerate(names)],
        "list_bbox_celeba.txt": [str(len(names)), "image_id x_1 y_1 width height",
                                 *(f"{n}    95  71 226 313" for n in names)],
        "list_landmarks_align_celeba.txt": [str(len(names)), " ".join(landmarks),
                                            *(f"{n} " + " ".join(["70"] * 10) for n in names)],
        "list_attr_celeba.txt": [str(len(names)), " ".join(attributes),
                                 *(f"{n} " + " ".join(["-1", " 1"] * 20) for n in names)],
    }
    for name, lines in files.items():
        (folder / name).write_text("\n".join(lines) + "\n")
    d = load_dataset("celeba", root=tmp_path)
    assert d.event_shape == (3, 64, 64) and d.leaf == Binomial(total_count=255)
    assert (d.train.shape, d.val.shape, d.test.shape) == ((3, 3, 64, 64), (2, 3, 64, 64), (2, 3, 64, 64))
    assert d.train_labels is None and d.val_labels is None and d.test_labels is None
    expected = torch.tensor(colors, dtype=torch.float32)[:, :, None, None].expand(7, 3, 64, 64)
    loaded = torch.cat([d.train, d.val, d.test])
    assert torch.equal(loaded, loaded.round())
    assert (loaded - expected).abs().max() <= 12  # JPEG; the white bands must be cropped away
    assert (loaded - expected).abs().mean() <= 2


@pytest.mark.parametrize("name", ["mnist", "svhn", "cifar10", "celeba"])
def test_missing_files_raise_dataset_not_found(tmp_path: Path, name: str) -> None:
    with pytest.raises(DatasetNotFoundError) as error:
        load_dataset(name, root=tmp_path / "empty")
    message = str(error.value)
    assert isinstance(error.value, FileNotFoundError)
    assert repr(name) in message and "download=True" in message and "--download" in message
    assert str((tmp_path / "empty").resolve()) in message and "missing" in message
    assert not (tmp_path / "empty" / "cache").exists()
