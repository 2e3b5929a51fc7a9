"""Discriminators and MMD kernel encoders: shapes for vector and image data, per-example outputs, errors."""

from __future__ import annotations

import pytest
import torch

from pyro_spn.nets import (
    ConvEncoder,
    DCGANDiscriminator,
    MLPDiscriminator,
    MLPEncoder,
    make_discriminator,
    make_encoder,
)

EVENT_SHAPES = [(2,), (1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("event_shape", EVENT_SHAPES)
def test_discriminator_maps_a_batch_to_logits(event_shape):
    net = make_discriminator(event_shape)
    assert isinstance(net, DCGANDiscriminator if len(event_shape) == 3 else MLPDiscriminator)
    x = torch.rand((5,) + event_shape, requires_grad=True)
    logits = net(x)
    assert logits.shape == (5,)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0  # the generator's gradient path


@pytest.mark.parametrize("event_shape", EVENT_SHAPES)
def test_encoder_maps_a_batch_to_features(event_shape):
    net = make_encoder(event_shape, 7)
    assert isinstance(net, ConvEncoder if len(event_shape) == 3 else MLPEncoder)
    features = net(torch.rand((4,) + event_shape))
    assert features.shape == (4, 7)
    assert torch.isfinite(features).all()


@pytest.mark.parametrize("event_shape, strided", [((1, 8, 8), 1), ((1, 28, 28), 3), ((3, 32, 32), 3),
                                                  ((3, 64, 64), 4), ((1, 4, 4), 1)])
def test_conv_depth_is_sized_from_the_image(event_shape, strided):
    convs = [m for m in make_discriminator(event_shape).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2)] * strided + [(1, 1)]
    assert convs[0].in_channels == event_shape[0]


@pytest.mark.parametrize("event_shape", [(2,), (3, 32, 32)])
def test_an_example_s_output_does_not_depend_on_the_rest_of_the_batch(event_shape):
    """No batch statistics (spectral norm, not BatchNorm): real and fake batches are scored alike."""
    net = make_discriminator(event_shape).eval()  # eval: no power iteration between the calls
    x = torch.rand((6,) + event_shape)
    alone = torch.stack([net(x[i: i + 1])[0] for i in range(6)])
    assert torch.allclose(net(x), alone, atol=1e-5)


def test_spectral_norm_bounds_the_lipschitz_constant():
    torch.manual_seed(1)
    net = MLPDiscriminator(2, hidden=(64, 64))
    for _ in range(20):  # let the power iterations converge
        net(torch.randn(8, 2))
    x, y = torch.randn(256, 2), torch.randn(256, 2)
    ratio = (net(x) - net(y)).abs() / (x - y).norm(dim=1)
    assert ratio.max() <= 1.05
    plain = MLPDiscriminator(2, hidden=(64, 64), spectral_norm=False)
    assert not any("parametrizations" in name for name, _ in plain.named_parameters())


def test_mlp_accepts_any_shape_with_the_right_number_of_entries():
    net = MLPEncoder(12, 3, hidden=())
    assert net(torch.rand(2, 3, 4)).shape == (2, 3)
    with pytest.raises(ValueError, match="x: expected 12 entries"):
        net(torch.rand(2, 5))


def test_conv_checks_the_input_shape():
    with pytest.raises(ValueError, match=r"x: expected shape \[N, 1, 8, 8\]"):
        make_discriminator((1, 8, 8))(torch.rand(2, 1, 8, 9))


@pytest.mark.parametrize("make, name", [
    (lambda: make_discriminator((3, 1, 1)), "event_shape"),
    (lambda: make_discriminator(()), "event_shape"),
    (lambda: make_encoder((2,), 0), "out_features"),
    (lambda: MLPEncoder(0, 2), "in_features"),
    (lambda: MLPDiscriminator(2, hidden=(4, 0)), "hidden"),
    (lambda: DCGANDiscriminator((1, 8, 8), base_channels=0), "base_channels"),
])
def test_bad_arguments_are_named(make, name):
    with pytest.raises(ValueError, match=name):
        make()


def test_spectral_norm_must_be_a_bool():
    with pytest.raises(TypeError, match="spectral_norm"):
        MLPEncoder(2, 2, spectral_norm="yes")
