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
    MetricResult,
    bits_per_dim,
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
