"""Tests of pyro_spn.metrics against known answers."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from pyro_spn.data import load_dataset
from pyro_spn.metrics import (
    FIDKID,
    ClassifierOnSamplesResult,
    MetricResult,
    bits_per_dim,
    classifier_on_samples,
    fid,
    frechet_distance,
    inception_features,
    kernel_inception_distance,
    kid,
    log_likelihood_gap,
    mmd2_rbf,
    mode_coverage,
    reconstruction_bce,
    reconstruction_mse,
    train_classifier_features,
)


def gaussian(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """``n`` draws of N(mean, cov) whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = np.random.default_rng(seed).standard_normal((n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z.T))).T  # whitened: sample covariance = I
    return torch.from_numpy(z @ np.linalg.cholesky(cov).T + mean)


def test_frechet_distance_identical_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(0))
    assert frechet_distance(x, x.clone()) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 5
    mean_a, mean_b = rng.normal(size=d), rng.normal(size=d)
    a_, b_ = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    cov_a, cov_b = a_ @ a_.T + 0.1 * np.eye(d), b_ @ b_.T + 0.1 * np.eye(d)
    expected = (np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
                - 2 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
    value = frechet_distance(gaussian(mean_a, cov_a, 400, 2).float(), gaussian(mean_b, cov_b, 300, 3).float())
    assert value == pytest.approx(expected, rel=1e-4)


def test_kid_identical_zero_and_shifted_positive():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    mean, std = kernel_inception_distance(x, x, subsets=10, subset_size=100)
    same_mean, _ = kernel_inception_distance(x, y, subsets=10, subset_size=100)
    shifted_mean, _ = kernel_inception_distance(x, y + 1.0, subsets=10, subset_size=100)
    assert abs(mean) < 0.05 and std >= 0 and abs(same_mean) < 0.05
    assert shifted_mean > 0.5
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(x, y, subset_size=1000)


def test_mmd2_identical_is_zero():
    x = torch.randn(300, 2, generator=torch.Generator().manual_seed(0))
    assert abs(mmd2_rbf(x, x.clone())) < 1e-2
    assert mmd2_rbf(x, x + 3.0) > 0.5


def test_mode_coverage_on_nine_clusters():
    data = load_dataset("9-clusters")
    assert mode_coverage(data.train, data.modes, scales=data.mode_scales) == 1.0
    assert mode_coverage(data.train, data.modes, covariances=data.mode_covariances) == 1.0
    one = data.train[data.train_labels == 4]
    assert mode_coverage(one, data.modes, scales=data.mode_scales) == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="scales and covariances"):
        mode_coverage(one, data.modes)


def test_log_likelihood_gap():
    data = load_dataset("9-clusters")
    true = data.true_log_density(data.test)
    assert log_likelihood_gap(true, true) == 0.0
    assert log_likelihood_gap(true - 2.0, true) == pytest.approx(2.0)


def test_bits_per_dim_uniform_8bit():
    d = 64
    ll = torch.full((5,), -d * math.log(256))
    assert bits_per_dim(ll, d, discrete=True) == pytest.approx(8.0)
    # a uniform density on [0, 1]^D (log-density 0), reported on the 8-bit scale y = x / 256
    assert bits_per_dim(torch.zeros(5), d, discrete=False, log_jacobian=-d * math.log(256)) == pytest.approx(8.0)
    with pytest.raises(ValueError, match="log_jacobian"):
        bits_per_dim(ll, d, discrete=True, log_jacobian=1.0)


def test_reconstruction_errors_hand_computed():
    x = torch.tensor([[1.0, 0.0], [0.5, 1.0]])
    x_hat = torch.tensor([[0.5, 0.5], [0.5, 0.25]])
    bce_0 = 2 * math.log(2)
    bce_1 = math.log(2) - math.log(0.25)
    assert reconstruction_bce(x_hat, x) == pytest.approx((bce_0 + bce_1) / 2)
    assert reconstruction_mse(x_hat, x) == pytest.approx((0.25 + 0.25 + 0 + 0.5625) / 4)
    with pytest.raises(ValueError, match="x_hat"):
        reconstruction_bce(x_hat + 1, x)


@pytest.fixture(scope="module")
def digits():
    data = load_dataset("digits")
    to_unit = data.preprocessing.inverse
    return to_unit(data.train), data.train_labels, to_unit(data.test), data.test_labels


def test_digit_classifier_features(digits):
    train, train_labels, test, test_labels = digits
    model = train_classifier_features(train, train_labels, epochs=15, seed=0, name="classifier-digits")
    with torch.no_grad():
        accuracy = (model.classify(test).argmax(1) == test_labels).float().mean()
    assert accuracy > 0.8
    same = fid(test, test, model)
    assert isinstance(same, MetricResult) and same.features == "classifier-digits"
    assert abs(same.value) < 1e-4
    noise = torch.rand(test.shape, generator=torch.Generator().manual_seed(0))
    metrics = FIDKID(test, model)
    assert metrics.fid(noise).value > 5 * metrics.fid(train).value  # held-out real data: small-sample bias only
    shifted = kid(test, noise, model, subsets=5, subset_size=100)
    assert shifted.std is not None and shifted.value > 0
    assert abs(metrics.kid(test, subsets=5, subset_size=100).value) < 0.1 * shifted.value


def test_fid_any_module_names_its_features():
    images = torch.rand(50, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    result = fid(images, images, nn.Flatten())
    assert result.features == "Flatten" and abs(result.value) < 1e-8
    with pytest.raises(ValueError, match="real"):
        fid(images * 2, images, nn.Flatten())
    with pytest.raises(ValueError, match="fake"):
        kid(images, images[0], nn.Flatten())


def test_inception_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights_path"):
        inception_features(tmp_path / "missing.pth")


def label_faithful_generator(images: torch.Tensor, labels: torch.Tensor):
    """A "generator" returning random real images of the asked labels (the global RNG draws which)."""
    order = torch.argsort(labels)
    pool, counts = images[order], torch.bincount(labels)
    starts = counts.cumsum(0) - counts

    def generate(asked: torch.Tensor) -> torch.Tensor:
        return pool[starts[asked] + (torch.rand(len(asked)) * counts[asked]).long()]

    return generate


def test_classifier_on_samples_separates_faithful_from_label_blind_generators(digits):
    train, train_labels, test, test_labels = digits
    faithful = label_faithful_generator(train, train_labels)
    state = torch.get_rng_state()
    good = classifier_on_samples(faithful, test, test_labels, samples_per_class=50, epochs=6)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(good, ClassifierOnSamplesResult)
    assert good.accuracy > 0.85 and good.num_generated == 500 and good.num_test == len(test)
    assert len(good.per_class_accuracy) == 10
    counts = torch.bincount(test_labels, minlength=10).double()
    assert good.accuracy == pytest.approx(float((torch.tensor(good.per_class_accuracy) * counts).sum() / len(test)))

    def label_blind(asked: torch.Tensor) -> torch.Tensor:
        return train[torch.randint(len(train), (len(asked),))]

    blind = classifier_on_samples(label_blind, test, test_labels, samples_per_class=50, epochs=6)
    assert blind.accuracy < 0.3


def test_classifier_on_samples_is_deterministic_given_seed():
    g = torch.Generator().manual_seed(0)
    test, test_labels = torch.rand(12, 1, 4, 4, generator=g), torch.arange(3).repeat(4)

    def noisy(asked: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(asked), 1, 4, 4) * (asked[:, None, None, None] + 1) / 4

    runs = [classifier_on_samples(noisy, test, test_labels, samples_per_class=8, epochs=2, seed=s) for s in (3, 3)]
    assert runs[0] == runs[1]
    four = classifier_on_samples(noisy, test, test_labels, num_classes=4, samples_per_class=2, epochs=1)
    assert four.num_generated == 8 and math.isnan(four.per_class_accuracy[3])


def test_classifier_on_samples_argument_errors():
    test, test_labels = torch.rand(6, 1, 4, 4), torch.tensor([0, 1, 2, 0, 1, 2])

    def generate(asked: torch.Tensor) -> torch.Tensor:
        return torch.rand(len(asked), 1, 4, 4)

    with pytest.raises(TypeError, match="generate"):
        classifier_on_samples("generator", test, test_labels)
    with pytest.raises(ValueError, match="test_images"):
        classifier_on_samples(generate, test * 2, test_labels)
    with pytest.raises(ValueError, match="test_labels must be a long"):
        classifier_on_samples(generate, test, test_labels.float())
    with pytest.raises(ValueError, match="test_labels must be in 0..1"):
        classifier_on_samples(generate, test, test_labels, num_classes=2)
    with pytest.raises(ValueError, match="num_classes"):
        classifier_on_samples(generate, test, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        classifier_on_samples(generate, test, test_labels, num_classes=1)
    for name in ("samples_per_class", "epochs", "batch_size"):
        with pytest.raises(ValueError, match=name):
            classifier_on_samples(generate, test, test_labels, **{name: 0})
    with pytest.raises(ValueError, match="seed"):
        classifier_on_samples(generate, test, test_labels, seed=1.5)
    with pytest.raises(ValueError, match=r"generate\(labels\) must return images of shape \[6, 1, 4, 4\]"):
        classifier_on_samples(lambda asked: torch.rand(len(asked), 1, 5, 5), test, test_labels, samples_per_class=2)
    with pytest.raises(ValueError, match=r"generate\(labels\)"):
        classifier_on_samples(lambda asked: torch.rand(len(asked), 1, 4, 4) + 1, test, test_labels)
